"""``python -m flexorch_provider.runner MODE ...``: the runner's command line (see :mod:`.cli`)."""

from .cli import run

run()
