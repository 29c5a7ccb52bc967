"""Real targets on one machine, for the demo and the test suite: an SSH fleet of sshd hosts in
network namespaces (:mod:`.fleet`) and a one-node Slurm with fake GPUs (:mod:`.slurm`).

They need root and Debian's packages (``scripts/system-deps.sh``), address only loopback and
namespaces they create, and write system files only where marked as theirs
(``/etc/slurm/slurm.conf``). Only one Slurm of theirs runs per machine: the demo and the test
suite must not run at the same time. :mod:`.demo` starts them for ``flexorch up --demo-targets``.
"""
