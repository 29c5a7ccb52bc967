"""The ``slurm`` target: an sbatch script rendered from the spec, followed in batches.

Commands go to the cluster either through the local Slurm clients (Airflow runs on a login
node: ``slurm.connection`` unset) or over SSH to a login node (an Airflow SSH connection,
through the same pooled ``SSHHook`` sessions as the ssh target). Every command is an argv
list we build from our own names; the script itself — where the spec's ``run`` lives —
travels on sbatch's stdin, and secret values go to a 0600 file the script sources (never
into the script, which Slurm keeps and shows to ``scontrol write batch_script``).

- submit: a live job named ``flexorch-<run key slug>`` is reattached, never submitted twice;
  otherwise ``sbatch --parsable`` with the script on stdin. An impossible request (more GPUs
  than a node has, an unknown GPU type) fails at once with what the partition offers.
- poll: **one** ``squeue -j id,id,...`` per cluster per interval for all followed jobs. A job
  the controller already forgot is settled from accounting (one ``sacct`` call) where the
  cluster keeps it, else from the exit-code file the script writes.
- logs: the job's output file, read from a byte offset (``tail -c``) — complete lines only.
- cancel: ``scancel``: the controller has taken the request when it returns, and ends the
  job on its own (the follower's next poll sees CANCELLED); nothing waits out a slow node.

Modules: ``cluster.py`` (where commands run), ``script.py`` (the sbatch script),
``states.py`` (Slurm states and accounting → JobStatus), ``backend.py`` (SlurmBackend).
"""

from flexorch_provider.backends.slurm.backend import SlurmBackend
from flexorch_provider.backends.slurm.cluster import Cluster, SlurmJobData, cluster_of, job_data
from flexorch_provider.backends.slurm.script import OUT_DIR, job_name, render_script, sbatch_options

__all__ = [
    "OUT_DIR",
    "Cluster",
    "SlurmBackend",
    "SlurmJobData",
    "cluster_of",
    "job_data",
    "job_name",
    "render_script",
    "sbatch_options",
]
