"""Spreading a case suite: `--shard I/N` over machines, `--workers N` over the devices of one.

Shards: the cases are sorted by name and shard I of N takes every N-th one starting at the I-th
(index mod N == I - 1), so shards stay balanced when cases are added and every case is in exactly
one shard. `waypoint-parity merge` (parity.merge) joins the shards' run folders into one.

Workers: `waypoint-parity parity --workers N` runs one case per task in a pool of N spawned
processes; they all write into one run folder, and the index is merged at the end. Worker k runs
on `device_for_worker(device, k)`: with `cuda` (or no device on a CUDA machine) that is
cuda:(k mod GPU count), one GPU per worker; an explicit `cuda:N` or `cpu` is kept as given. The
pytest path (`pytest --parity cases/ -n N --dist loadfile`) pins pytest-xdist worker gwK the same way.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from parity.errors import UserError

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N) with 1 <= I <= N; anything else is a UserError."""
    parts = str(text).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--shard: expected I/N with whole numbers, e.g. 1/4, got {text!r}")
    i, n = (int(p) for p in parts)
    if n < 1 or not 1 <= i <= n:
        raise UserError(f"--shard: I must be between 1 and N (N >= 1), got {text!r}")
    return i, n


def select_shard(items: Sequence[T], shard: tuple[int, int], name: Callable[[T], str]) -> list[T]:
    """The items of shard (I, N): sorted by name, every N-th starting at the I-th."""
    i, n = shard
    keep = set(sorted({name(x) for x in items})[i - 1::n])
    return [x for x in items if name(x) in keep]


def device_for_worker(device: str, worker: int) -> str:
    """`cuda` -> cuda:(worker mod GPU count); anything else unchanged."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return device
    index = worker % count
    torch.cuda.set_device(index)  # code that says plain "cuda" lands on this worker's GPU too
    return f"cuda:{index}"


def worker_index(worker_id: str | None) -> int | None:
    """pytest-xdist's `gw3` -> 3; None outside xdist."""
    if not worker_id or not worker_id.startswith("gw") or not worker_id[2:].isdigit():
        return None
    return int(worker_id[2:])


# ---- process pool (`parity --workers N`) -------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(slots, threads: int) -> None:
    import torch

    _WORKER["index"] = slots.get()
    # CPU reductions depend on the thread count: a worker computes with the parent's, so a split
    # run gives the same bits as the one-process run.
    torch.set_num_threads(threads)


def _run_case_task(case_path: str, sides, pairs, out_root: str, oracle: bool = True) -> list[dict[str, Any]]:
    from dataclasses import replace

    from parity.case import load_case
    from parity.report import write_report
    from parity.suite import CaseRunner, index_entry

    index = _WORKER.get("index", 0)
    sides = replace(sides, device=device_for_worker(sides.device, index))
    case = load_case(case_path)
    root = Path(out_root)
    runner = CaseRunner(sides, root, log=lambda msg: print(f"[worker {index}, {sides.device}]{msg}", flush=True), oracle=oracle)
    entries = []
    for outcome in runner.run_case(case, case.pairs or pairs):
        write_report(outcome.result, outcome.out_dir, run_index=root / "index.html")
        entries.append(index_entry(outcome, root))
    return entries


def run_cases_parallel(cases, sides, pairs, out_root: Path, workers: int,
                       log: Callable[[str], None] = print, oracle: bool = True) -> list[dict[str, Any]]:
    """Runs each case (which must have a `.path`) as one task on a pool of `workers` spawned
    processes; returns the index.json rows, in case order. Every worker writes into `out_root`."""
    ctx = multiprocessing.get_context("spawn")  # no forked torch state, CUDA-safe
    slots = ctx.Queue()
    for k in range(workers):
        slots.put(k)
    rows: dict[str, list[dict[str, Any]]] = {}
    import torch

    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots, torch.get_num_threads())) as pool:
        futures = {pool.submit(_run_case_task, str(case.path), sides, pairs, str(out_root), oracle): case for case in cases}
        for future in as_completed(futures):
            case = futures[future]
            rows[case.name] = future.result()
            for e in rows[case.name]:
                log(f"{case.name}: {e['pair']} {e['verdict']}"
                    + (f" (first divergence: {e['first_divergence']})" if e.get("first_divergence") else ""))
    return [e for case in cases for e in rows[case.name]]
