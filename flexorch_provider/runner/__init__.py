"""The flexorch job runner: one detached supervisor per job, shared by ``local`` and ``ssh``.

Standard library only and Python 3.6-compatible: hosts have a plain ``python3`` and nothing
else. The modules import only each other (relatively) and the standard library, because the
package ships as one file: :mod:`.bundle` zips them into ``jobrunner-<hash>.pyz`` (the ssh
target copies it to ``~/.flexorch/bin/`` on each host, the local target writes it to the
same place on the worker) and both run it as ``python3 -S -c BOOT jobrunner-<hash>.pyz MODE ...``
(:func:`.bundle.command`; ``python3 -S jobrunner-<hash>.pyz MODE ...`` works too).
The worker also imports the modules directly (status, logs, cancel, GPU names).

Everything about a job lives in one run directory; no user value ever appears on a command
line::

    RUN_DIR/job.json       what to run (argv or script, setup, env, workdir, timeout, GPUs)
    RUN_DIR/secrets.json   secret env values (0600); read and deleted at start
    RUN_DIR/runner.pid     the supervisor's pid (it is a session leader)
    RUN_DIR/job.pgid       process group of the job (setup, then run)
    RUN_DIR/log            job stdout+stderr, secret values replaced by ***
    RUN_DIR/result.json    written last and atomically: state, exit code, times
    RUN_DIR/claimed        the job's outcome reached Airflow (written by ``claim``)
    RUN_DIR/hold, gang.json, go.json   a node of a multi-node group: held until ``go`` (:mod:`.gang`)

Modes (:mod:`.cli`)::

    jobrunner submit KEY_DIR     read {"job": ..., "secrets": ...} from stdin; reattach to the
                                 live attempt under KEY_DIR, adopt one that succeeded without
                                 its outcome reaching Airflow, or create and start the next one
                                 (KEY_DIR/<n>); print one JSON line
    jobrunner live KEY_DIR       what submit would reattach to or adopt, as JSON, or {}
    jobrunner claim RUN_DIR...   the attempt's outcome reached Airflow: a later try runs anew
    jobrunner start RUN_DIR      detach and supervise the job (returns once it runs)
    jobrunner status RUN_DIR...  one JSON line per directory
    jobrunner log RUN_DIR CURSOR complete log lines after byte CURSOR, as JSON
    jobrunner cancel RUN_DIR     stop the job (TERM, then KILL after the grace)
    jobrunner code-has DIGEST... whether this host keeps each code bundle (:mod:`.code`)
    jobrunner code-put DIGEST    receive a code bundle (a tar on stdin), kept once its files
                                 give that digest
    jobrunner go RUN_DIR         start a held node of a multi-node group: {"env": the group's
                                 contract for this node} on stdin (:mod:`.gang`)

Services (a replica is a job under SVC_DIR/<slot>-<revision>; its job.json carries
"service" and "health")::

    jobrunner replicas SVC_DIR   one JSON line per replica: slot, revision, state
    jobrunner health RUN_DIR     run the replica's health check here, as JSON
    jobrunner retire KEY_DIR     stop a replica and move it to SVC_DIR/.retired/

States: pending (launched, not yet running), running, succeeded, failed, timeout,
cancelled, lost (the supervisor died without a result: kill -9, reboot).

Modules: :mod:`.files` (atomic and private writes, reads, the supervisor's identity),
:mod:`.status`, :mod:`.attempts` (submit: reattach or a new attempt), :mod:`.gpus`
(nvidia-smi, model names, claims), :mod:`.logs` (reading complete lines, masking secrets),
:mod:`.procs` (process groups: kill, reap, cancel), :mod:`.launch` (detach a supervisor),
:mod:`.supervisor`, :mod:`.gang` (a node of a multi-node group), :mod:`.code` (code bundles), :mod:`.replicas`
(services: replicas, health, retire), :mod:`.cli`; :mod:`.bundle` builds the zipapp on the
worker and is not shipped.
"""
