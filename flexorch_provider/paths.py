"""Where flexorch keeps what must outlive a process on the Airflow machines."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """``$FLEXORCH_STATE_DIR``, default ``$AIRFLOW_HOME/flexorch``: the policy ledger, the triggers'
    log cursors, the service watchers' memory. With several Airflow machines it must be shared."""
    base = os.environ.get("FLEXORCH_STATE_DIR") or os.path.join(
        os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"), "flexorch"
    )
    return Path(base)
