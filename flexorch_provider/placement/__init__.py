"""Target choice: which of a spec's targets a job runs on, and whether it moves.

- ``choice.py``: the records (what each target had free, moves, stays: :class:`~.choice.Choice`);
- ``capacity.py``: what each target has free now, read through its backend's ``gpu_pool``;
- ``placer.py``: the decisions (submit to the first that takes it, find a job again on any target,
  stay or move after ``max_pending``), returned to the operator that follows the job.

Nothing is imported here, so the records can be read without the backends.
"""
