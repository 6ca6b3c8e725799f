"""Per-frame work of a comparison and its report, spread over the CPUs: `frame_map(fn, items)`.

    for row in frame_map(one_frame, frames):   # in order, computed ahead
        ...

Frames are independent, so each is one task (so is each stage page of a report). Threads share one
GIL: the Python around the ~80 small stages of a frame runs one thread at a time, which on a 16-core
machine holds a 240-frame comparison to several seconds however many threads run. So where this
process may use more than `PROCESSES_FROM` CPUs, at least `PROCESSES_MIN_ITEMS` items go to worker
processes forked for them: they inherit `fn`, the items and everything those reach (open captures,
the comparison result) without pickling, and send back only what `fn` returns. Workers run torch
single-threaded (a forked child must not enter the parent's OpenMP pool) and never touch CUDA.
Fewer CPUs, fewer items, a system other than Linux, or a process that has initialised CUDA keep
threads (`waypoint-parity compare`/`report` in their own process fork; `make parity` on a GPU does not); the results are the same either
way (tests/test_report.py, `test_worker_processes_give_the_same_comparison_and_report_as_threads`).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

MAX_WORKERS = 16
"""Each worker holds one frame of both captures and their float64 copies: with full KV views at the
real size (~0.46 GB a frame) more would cost more memory than the time they save."""
PROCESSES_FROM = 2
"""Worker processes only with more CPUs than this (CI's 2 cores keep threads: forking costs more than it saves)."""
PROCESSES_MIN_ITEMS = 16

_JOBS: dict[int, tuple[Callable, list]] = {}
_next_job = itertools.count()


def workers() -> int:
    """The CPUs this process may use (its affinity, as `taskset` or a container sets it), up to `MAX_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cpus or 1))


def use_processes(items: int) -> bool:
    # fork only on Linux: macOS offers it, but its system libraries are not safe in a forked child; and
    # never once this process has initialised CUDA (`make parity` on a GPU compares in the process that
    # generated): the CUDA runtime does not survive a fork, and that path was never run forked on a GPU
    return (workers() > PROCESSES_FROM and items >= PROCESSES_MIN_ITEMS and sys.platform.startswith("linux")
            and not _cuda_initialized())


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def frame_map(fn: Callable[[Any], Any], items: Iterable, processes: bool | None = None) -> Iterator:
    """`map(fn, items)`, results in order, spread over `workers()` threads or forked processes
    (`processes`: None chooses by `use_processes`)."""
    items = list(items)
    if processes is None:
        processes = use_processes(len(items))
    if not processes:
        with ThreadPoolExecutor(max_workers=workers()) as pool:
            yield from pool.map(fn, items)
        return
    job = next(_next_job)
    _JOBS[job] = (fn, items)  # set before the fork: the workers inherit it
    try:
        with ProcessPoolExecutor(max_workers=min(workers(), len(items)), mp_context=multiprocessing.get_context("fork"),
                                 initializer=_init_worker) as pool:
            yield from pool.map(_run, itertools.repeat(job), range(len(items)), chunksize=1)
    finally:
        del _JOBS[job]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run(job: int, index: int) -> Any:
    fn, items = _JOBS[job]
    return fn(items[index])
