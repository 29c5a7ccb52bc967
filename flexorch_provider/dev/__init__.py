"""Development tools: the embedded Airflow stack (:mod:`.stack`), its metadata database
(:mod:`.stack_db`: a private PostgreSQL, or SQLite) and the real test targets on one machine
(:mod:`.testbed`: an SSH fleet of sshd hosts, a one-node Slurm), used by ``flexorch up``, the
demo and the test suite. None of it is part of a production deployment, where Airflow runs as
usual with flexorch-provider installed into it.
"""
