"""Benchmark: what the harness costs on top of the pipeline it measures.

    python benchmarks/run.py --size real --device cuda --frames 24 [--compile default] [--json out.json]
    python benchmarks/run.py --arch waypoint --size real --device cuda ...   # world_engine's classes (WORLD_ENGINE_SRC)
    make bench ARGS="--size real --device cuda"

In one process, on the random-weight checkpoint (`--size real`: Waypoint-1-Small's dimensions):
1. a warm-up run (discarded: allocator, kernels, autotuning), then bare (nothing captured) and full
   capture runs of the upstream profile, alternated twice     -> capture overhead per frame
2. the script profile right after a full run, nothing reset   -> two-sided peak GPU memory, against
   each side alone (peaks reset before each)
3. comparison + summary + HTML report of the two sides       -> relative to their generation time
Per run: steady-state frame time (median of frames after the first two), the first frame's extra
time (compilation, warm-up), peak GPU memory, bytes written per frame. Prints one table.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "real"), default="tiny")
    p.add_argument("--arch", choices=("stand-in", "waypoint"), default="stand-in",
                   help="waypoint: the real classes (world_engine's WorldModel, WORLD_ENGINE_SRC), checkpoint from "
                        "`make-checkpoint --arch waypoint` drawn on the device; stand-in: the built-in model")
    p.add_argument("--device", default=None)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--compile", default="none", choices=("none", "default", "reduce-overhead", "max-autotune"))
    p.add_argument("--checkpoint", type=Path, help="reuse this checkpoint folder")
    p.add_argument("--workdir", type=Path, help="where captures go (default: a temp folder, removed)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report in step 3")
    p.add_argument("--repeat", type=int, default=2, help="bare runs in step 1 (full runs: one fewer, alternated)")
    p.add_argument("--no-bare", action="store_true", help="skip step 1 (long rollouts: time and memory of the two sides only)")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args()

    import torch

    from parity.case import parse_case
    from parity.environment import default_device
    from parity.tiny import make_checkpoint
    from reference.runner import ReferenceRunner

    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = args.device or default_device()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    code_source = "snapshot"
    if args.arch == "waypoint":
        from parity.tiny.waypoint_arch import make_waypoint_checkpoint

        code_source = "world_engine"
        folder = args.checkpoint or make_waypoint_checkpoint(work / f"wp-{args.size}", size=args.size, device=device)["snapshot"].parent
        ckpt = Path(folder) / "overworld"
    else:
        ckpt = args.checkpoint or make_checkpoint(work / f"ckpt-{args.size}", size=args.size)
    checkpoint_s = time.perf_counter() - t
    case = parse_case({"name": "bench", "prompt": "A first-person gameplay video exploring a stylized world.",
                       "seed": 42, "frames": args.frames, "controls": {"buttons": [17]}}, None)
    options = {"compile_mode": args.compile}

    from parity.runner import RunRequest

    cuda = device.startswith("cuda")

    def peak() -> float | None:
        return torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

    def reset() -> None:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def run(label, side, capture="full", prompt_from=None):
        out = work / label
        t0 = time.perf_counter()
        ReferenceRunner(ckpt, profile=side, code_source=code_source).run(RunRequest(case, side, out, device, dict(options), prompt_from, capture=capture))
        wall = time.perf_counter() - t0
        manifest = json.loads((out / "manifest.json").read_text())
        frames = manifest["frame_times_s"]
        steady = statistics.median(frames[2:] if len(frames) > 4 else frames)
        written = sum(f.stat().st_size for f in (out / "frames").glob("*") if f.is_file())
        return out, {
            "run": label, "side": side, "capture": capture, "wall_s": wall, "frame_s": steady,
            "first_frame_extra_s": frames[0] - steady, "fps": 1.0 / steady if steady else float("inf"),
            "peak_gpu_gib": peak(), "bytes_per_frame": written / len(frames), "generation_s": sum(frames),
        }

    results = []
    bare_times, full_times = [], []
    if not args.no_bare:
        reset()
        run("warmup", "upstream", capture="none")
        for i in range(1, args.repeat + 1):  # bare, full, bare, full, ..., bare: neither side gets the warm slot
            reset()
            _, r = run(f"bare-{i}", "upstream", capture="none")
            results.append(r)
            bare_times.append(r["frame_s"])
            if i == args.repeat:
                break
            reset()
            _, r = run(f"full-{i}", "upstream")
            results.append(r)
            full_times.append(r["frame_s"])
    reset()
    a_dir, full = run("full", "upstream")
    results.append(full)
    full_times.append(full["frame_s"])
    peak_a = full["peak_gpu_gib"]
    b_dir, script = run("script", "script", prompt_from=a_dir)  # nothing freed by hand: what a two-sided run costs
    results.append(script)
    peak_two = peak()
    reset()
    _, alone = run("script-alone", "script", prompt_from=a_dir)
    results.append(alone)
    peak_b = alone["peak_gpu_gib"]

    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.output import write_outputs

    t0 = time.perf_counter()
    result = compare_captures(Capture.open(a_dir), Capture.open(b_dir))
    write_outputs(result, work / "cmp")
    compare_s = time.perf_counter() - t0
    report_s = 0.0
    if not args.no_report:
        from parity.report import write_report

        t0 = time.perf_counter()
        write_report(result, work / "report")
        report_s = time.perf_counter() - t0
    generation = full["generation_s"] + script["generation_s"]
    summary = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__, "size": args.size, "arch": args.arch, "frames": args.frames, "compile": args.compile,
        "checkpoint_s": checkpoint_s, "runs": results,
        "capture_overhead_ratio": (statistics.median(full_times) / statistics.median(bare_times) - 1.0) if bare_times else None,
        "two_sided_peak_gib": peak_two,
        "two_sided_peak_over_larger_side": (peak_two / max(peak_a, peak_b)) if cuda else None,
        "compare_s": compare_s, "report_s": report_s, "generation_s": generation,
        "compare_plus_report_over_generation": (compare_s + report_s) / generation,
    }
    _print(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


def _print(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"waypoint-parity benchmark: {s['size']} {s.get('arch', 'stand-in')} model, {s['frames']} frames, {s['device']}, compile={s['compile']}")
    for col in ("run", "frame ms", "fps", "first-frame extra s", "peak GPU GiB", "MB written / frame"):
        table.add_column(col, justify="right")
    for r in s["runs"]:
        table.add_row(r["run"], f"{1000 * r['frame_s']:.1f}", f"{r['fps']:.2f}", f"{r['first_frame_extra_s']:.2f}",
                      "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f}", f"{r['bytes_per_frame'] / 1e6:.2f}")
    console = Console(width=140)
    console.print(table)
    if s["capture_overhead_ratio"] is not None:
        console.print(f"capture overhead per frame (median full vs median bare): {100 * s['capture_overhead_ratio']:+.2f}%")
    if s["two_sided_peak_over_larger_side"] is not None:
        console.print(f"two-sided peak GPU memory {s['two_sided_peak_gib']:.2f} GiB / larger side alone: {s['two_sided_peak_over_larger_side']:.3f}")
    console.print(f"compare {s['compare_s']:.2f} s + report {s['report_s']:.2f} s = "
                  f"{100 * s['compare_plus_report_over_generation']:.1f}% of generation time")


if __name__ == "__main__":
    sys.exit(main())
