"""``flexorch gpus`` (a table of every GPU pool) and ``flexorch pools sync`` (Airflow pools
whose slots are GPUs)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flexorch_provider.fanout import parallel


def _inventories(args: argparse.Namespace) -> list[tuple[Any, Any, Exception | None]]:
    import contextlib

    from flexorch_provider.inventory import inventory
    from flexorch_provider.inventory.pools import load_pools

    pools = load_pools(args.pools)
    chosen = [p for name, p in pools.items() if not args.pool or name in args.pool]
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table (some libraries log to stdout)
        return parallel(chosen, inventory)


def _gib(mib: int | None) -> str:
    return "-" if mib is None else f"{mib // 1024}Gi"  # whole GiB at least free, as the flexorch page shows it


def gpus_command(args: argparse.Namespace) -> int:
    results = _inventories(args)
    if args.json:
        out = [inv.to_dict() if err is None else {"pool": pool.name, "error": str(err)} for pool, inv, err in results]
        print(json.dumps(out, indent=2))
        return 0 if all(e is None for _, _, e in results) else 1
    rows = [("POOL", "SOURCE", "NODE", "MODEL", "GPUS", "FREE", "FREE MEMORY", "STATE")]
    for pool, inv, err in results:
        if err is not None:
            rows.append((pool.name, pool.source, "-", "-", "-", "-", "-", f"error: {str(err).splitlines()[0][:80]}"))
            continue
        for node in inv.nodes:
            if not node.gpus:
                rows.append(
                    (pool.name, pool.source, node.name, "-", "0", "0", "-", f"{node.state} {node.detail}".strip())
                )
            for model, (total, free) in node.models().items():
                mems = [g.memory_free for g in node.gpus if g.model == model and not g.busy]
                known = [m for m in mems if m is not None]
                mem = (
                    f"{_gib(min(known))}-{_gib(max(known))}"
                    if known and min(known) != max(known)
                    else (_gib(known[0]) if known else "-")
                )
                rows.append((pool.name, pool.source, node.name, model, str(total), str(free), mem, node.state))
        rows.append((pool.name, pool.source, "(total)", "", str(inv.total), str(inv.free), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0 if all(e is None for _, _, e in results) else 1


def pools_sync_command(args: argparse.Namespace) -> int:
    """One Airflow pool per GPU pool, slots = its GPUs (deferred tasks count: include_deferred)."""
    from airflow.models.pool import Pool

    status = 0
    for pool, inv, err in _inventories(args):
        name = pool.airflow_pool
        if err is not None or (inv.total == 0 and any(n.state != "up" for n in inv.nodes)):
            why = err or "; ".join(f"{n.name}: {n.state} {n.detail}" for n in inv.nodes if n.state != "up")
            print(
                f"skipped  {name}: cannot count the GPUs of pool {pool.name} ({why}); its slots stay as they are",
                file=sys.stderr,
            )
            status = 1
            continue
        existing = Pool.get_pool(name)
        before = existing.slots if existing else None
        Pool.create_or_update_pool(
            name=name,
            slots=inv.total,
            include_deferred=True,
            description=f"flexorch: the {inv.total} GPUs of GPU pool {pool.name} ({pool.source}); "
            "tasks take one slot per GPU",
        )
        verb = "created" if before is None else ("updated" if before != inv.total else "unchanged")
        print(f"{verb:8} {name}: {inv.total} slots" + (f" (was {before})" if verb == "updated" else ""))
    return status


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("gpus", help="GPU inventory of every pool in gpu_pools.yaml: total and free per node and model")
    p.add_argument("--pools", help="the pools file (default: $FLEXORCH_GPU_POOLS or <dags>/specs/gpu_pools.yaml)")
    p.add_argument("--pool", action="append", help="only this pool (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=gpus_command)

    p = sub.add_parser("pools", help="Airflow pools that count GPUs")
    pools_sub = p.add_subparsers(dest="pools_command", required=True, metavar="ACTION")
    s = pools_sub.add_parser("sync", help="create/update one Airflow pool per GPU pool: gpu-<name>, slots = GPUs")
    s.add_argument("--pools", help="the pools file (default: $FLEXORCH_GPU_POOLS or <dags>/specs/gpu_pools.yaml)")
    s.add_argument("--pool", action="append", help="only this pool (repeatable)")
    s.set_defaults(func=pools_sync_command)
