"""What deploy and reconcile run on each host, for ``flexorch render``."""

from __future__ import annotations

import json
from collections.abc import Sequence

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.services.state import desired_state


def render_service(job: ResolvedJob, root: str, hosts: Sequence[str], runner: Sequence[str]) -> str:
    """What deploy/reconcile run on each host, with the exact runner commands (for ``flexorch render``)."""
    import shlex

    want = desired_state(job, root)
    w = job.service
    check = "none: a replica counts as healthy while it runs"
    if w.health is not None:
        check = f"GET http://127.0.0.1:{w.port}{w.health.http}" if w.health.http else f"command {w.health.command!r}"
        check += f" on the host, every {w.health.interval}, grace {w.health.grace}"
    spread = f"one per host (each listens on port {want.port})" if want.port else "spread over the hosts"
    doc = json.dumps({"job": want.documents.get(0, {}), "secrets": {k: "<secret>" for k in job.secrets}}, indent=2)
    return (
        "\n".join(
            [
                f"# service {want.name}: {want.replicas} replicas of revision {want.revision}, {spread}, on "
                + ", ".join(hosts),
                f"# update: {want.strategy} (max_surge {want.max_surge}, max_unavailable {want.max_unavailable}); "
                f"health: {check}",
                "# deploy and reconcile converge to this; undeploy stops every replica. On each host:",
                shlex.join([*runner, "replicas", want.directory]) + "   # what runs there now",
                "# a missing replica N is started with this JSON on stdin (replica 0 shown):",
                shlex.join([*runner, "submit", f"{want.directory}/<N>-{want.revision}"]),
                doc,
                "# " + shlex.join([*runner, "health", "<run dir>"]) + "   # health, run on the host",
                "# " + shlex.join([*runner, "retire", "<replica dir>"]) + "   # stop an old or dead replica",
            ]
        )
        + "\n"
    )
