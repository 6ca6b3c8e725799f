"""Benchmark: what comparing two captures and writing their report costs, per frame, at the real size.

    python benchmarks/compare_report.py [--frames 240] [--capture every:8,kv:digest] [--json out.json] [--profile 25]

Builds two captures with `parity.capture.CaptureWriter`, as the runners write them, at Waypoint-1-Small's
shapes: 16x32x32 bf16 latents, 4 denoise steps, a cache pass, 22 KV layers (digests under `kv:digest`),
360x640 decoded frames (smooth, textured content, so PNG and SSIM cost what they cost on real frames).
B is A plus a small perturbation (latents scaled by 1 + 1e-3 noise, a few pixels off by a level or two),
so every stage is measured and the metrics are not trivial. Then, each timed on its own:
`compare_captures`, `write_outputs` (summary.json, stages.csv) and `write_report` (HTML, PNGs, video).
Prints wall seconds; CPU seconds of all threads and worker processes (the work itself, whatever else
shares the machine) and of the main process alone (with worker processes: the part that does not
spread over the CPUs); wall ms per frame; and, with --generation-ms, the share of a generation at that
many ms a frame per side (issue 12's goal: compare + report <= 10% of generation). `--pool` overrides
how `parity.frame_pool` spreads the frames. `--profile N` prints the N costliest functions of each
part (cProfile, cumulative, main thread only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from table import print_rows  # benchmarks/ is on sys.path when a benchmark runs as a script

LATENT = (1, 1, 16, 32, 32)
FRAME_HW = (360, 640)
STEPS = 4
LAYERS = 22
KV_HEADS = 20
PROMPT = (1, 512, 2048)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--capture", default="every:8,kv:digest",
                   help="capture policy of both sides (default: the real-size long run's, benchmarks/real_size.py)")
    p.add_argument("--workdir", type=Path, help="where captures and outputs go (default: a temp folder)")
    p.add_argument("--reuse", action="store_true", help="reuse the captures already in --workdir")
    p.add_argument("--generation-ms", type=float, default=100.0,
                   help="generation time of one frame of one side, for the share (H200 compiled: ~60-150 ms)")
    p.add_argument("--pool", choices=("auto", "threads", "processes"), default="auto",
                   help="how frames are spread (parity.frame_pool): auto = processes on more than 2 CPUs")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions of each part")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args()

    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.output import write_outputs
    from parity.report import write_report

    try:
        import parity.frame_pool as frame_pool
    except ImportError:  # a tree from before parity.frame_pool (frames on at most 8 threads): the "before" figure
        frame_pool = None

    work = args.workdir or Path(tempfile.mkdtemp(prefix="wp-cmp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    a_dir, b_dir = work / "a", work / "b"
    t0 = time.perf_counter()
    if not (args.reuse and (a_dir / "manifest.json").is_file()):
        make_captures(a_dir, b_dir, args.frames, args.capture)
    build_s = time.perf_counter() - t0
    frames = int(json.loads((a_dir / "manifest.json").read_text())["frames_written"])
    for out in ("cmp", "report"):
        if (work / out).exists():
            import shutil

            shutil.rmtree(work / out)

    if args.pool != "auto":  # the benchmark's own override of the automatic choice
        if frame_pool is None:
            p.error("--pool needs parity.frame_pool (this tree predates it)")
        frame_pool.use_processes = lambda items: args.pool == "processes"
    cpu_s: dict[str, float] = {}
    main_cpu_s: dict[str, float] = {}

    def timed(label, fn):
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started, cpu = time.perf_counter(), _cpu_seconds()
        out = fn()
        took = time.perf_counter() - started
        cpu_s[label], main_cpu_s[label] = (end - begin for end, begin in zip(_cpu_seconds(), cpu))
        if profiler is not None:
            import pstats

            profiler.disable()
            print(f"---- {label}: the {args.profile} costliest functions (cumulative) ----")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
        return out, took

    result, compare_s = timed("compare_captures", lambda: compare_captures(Capture.open(a_dir), Capture.open(b_dir)))
    _, outputs_s = timed("write_outputs", lambda: write_outputs(result, work / "cmp"))
    _, report_s = timed("write_report", lambda: write_report(result, work / "report"))
    total = compare_s + outputs_s + report_s
    generation_s = 2 * frames * args.generation_ms / 1000
    rows = {
        "frames": frames, "capture": args.capture, "cpus": os.cpu_count(),
        "workers": frame_pool.workers() if frame_pool else min(8, os.cpu_count() or 1),
        "worker_processes": frame_pool.use_processes(frames) if frame_pool else False, "build_captures_s": build_s,
        "compare_s": compare_s, "write_outputs_s": outputs_s, "write_report_s": report_s, "total_s": total,
        "compare_cpu_s": cpu_s["compare_captures"], "write_outputs_cpu_s": cpu_s["write_outputs"],
        "write_report_cpu_s": cpu_s["write_report"], "total_cpu_s": sum(cpu_s.values()),
        "main_process_cpu_s": sum(main_cpu_s.values()),
        "compare_ms_per_frame": 1000 * compare_s / frames, "write_outputs_ms_per_frame": 1000 * outputs_s / frames,
        "write_report_ms_per_frame": 1000 * report_s / frames, "total_ms_per_frame": 1000 * total / frames,
        "generation_ms_per_frame_per_side": args.generation_ms,
        "total_over_generation": total / generation_s,
        "verdict": "PASS" if result.passed else "FAIL",
        "stages": len(result.stages),
    }
    print_rows(rows, args.json)
    return 0


def _cpu_seconds() -> tuple[float, float]:
    """(user + system time of this process and its finished children (the frame workers), of this process alone)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system, t.user + t.system


def make_captures(a_dir: Path, b_dir: Path, frames: int, capture: str) -> None:
    """Two captures of `frames` frames at the real size, B = A plus a small perturbation, written
    frame by frame through `CaptureWriter` as the reference runner writes them."""
    import numpy as np
    import torch

    from parity.capture import CapturePolicy, CaptureWriter, Protocol

    sigmas = [1.0, 0.861, 0.729, 0.321, 0.0]
    protocol = Protocol(sigmas=sigmas, sigma_dtype="bfloat16", steps=STEPS, noise_rule="shared", noise_dtype="float32",
                        encoder_class="umt5", encoder_dtype="bfloat16", prompt_mask="multiply", prompt_source="encoded",
                        model_dtype="bfloat16", cache_mode="ring", cache_pass=True, vae_dtype="bfloat16",
                        decode_input_dtype="bfloat16", latent_scale=1.0, latent_shift=0.0, strict_load=True)
    policy = CapturePolicy.parse(capture)
    writers = [CaptureWriter(d, {"side": side, "runner": {"name": "benchmark", "profile": side},
                                 "case": {"name": "bench", "frames": frames}, "seed": 42, "device": "cpu"}, policy)
               for d, side in ((a_dir, "upstream"), (b_dir, "perturbed"))]
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    emb = torch.randn(PROMPT, generator=gen).to(torch.bfloat16)
    mask = torch.zeros(PROMPT[:2], dtype=torch.bool)
    mask[:, 40:] = True
    for i, w in enumerate(writers):
        w.set("protocol", protocol.describe())
        w.set("alignment", {"noise": "shared", "prompt": "shared", "prompt_source": "encoded"})
        w.set("kv_layout", "bench")
        w.record_prompt(emb if i == 0 else _nudged(emb, gen), mask)
    scene = _scene(rng)
    for f in range(frames):
        with writers[0].frame(f) as rec_a, writers[1].frame(f) as rec_b:
            for name, ta, tb in _frame_stages(f, sigmas, policy.kv, scene, gen, rng):
                rec_a[name], rec_b[name] = ta, tb
    for w in writers:
        w.close(complete=True, frame_times_s=[0.1] * frames)


def _nudged(t, gen, rel=1e-3):
    import torch

    return (t.float() * (1 + rel * torch.randn(t.shape, generator=gen))).to(t.dtype)


def _frame_stages(f: int, sigmas: list[float], kv: str, scene, gen, rng):
    """(stage name, A's tensor, B's tensor) of frame `f`, in the order the reference runner records them."""
    import numpy as np
    import torch

    bf16 = torch.bfloat16
    for name, size in (("mouse", 2), ("button", 256), ("scroll", 1)):
        t = torch.zeros(1, 1, size, dtype=bf16)
        yield f"controls.{name}", t, t
    noise = torch.randn(LATENT, generator=gen)
    yield "noise.native", noise, noise
    x = xb = noise.to(bf16)
    yield "noise", x, x
    ts = torch.tensor([[f]], dtype=torch.long)
    for i in range(STEPS):
        s = torch.tensor(sigmas[i], dtype=bf16)
        v = torch.randn(LATENT, generator=gen).to(bf16)
        vb = _nudged(v, gen)
        up, upb = (x.float() - 0.2 * v.float()).to(bf16), (xb.float() - 0.2 * vb.float()).to(bf16)
        yield f"step{i}.sigma", s, s
        yield f"step{i}.timestamp", ts, ts
        yield f"step{i}.input", x, xb
        yield f"step{i}.velocity", v, vb
        yield f"step{i}.update", up, upb
        x, xb = up, upb
    yield "latent", x, xb
    zero = torch.zeros((), dtype=bf16)
    out = torch.randn(LATENT, generator=gen).to(bf16)
    yield "cache_pass.sigma", zero, zero
    yield "cache_pass.timestamp", ts, ts
    yield "cache_pass.input", x, xb
    yield "cache_pass.output", out, _nudged(out, gen)
    if kv != "off":
        visible = torch.arange(max(0, f - 15), f + 1, dtype=torch.long)  # a 16-frame local window
        n = len(visible)
        shape = (1, KV_HEADS, n, 3) if kv == "digest" else (1, KV_HEADS, n * 256, 128)
        for layer in range(LAYERS):
            keys = torch.randn(shape, generator=gen).to(bf16)
            values = keys.flip(-1)
            yield f"kv{layer}.frames", visible, visible
            yield f"kv{layer}.keys", keys, _nudged(keys, gen)
            yield f"kv{layer}.values", values, _nudged(values, gen)
    frame_a = _frame(scene, f)
    frame_b = frame_a.copy()
    spots = rng.random(frame_a.shape[:2]) < 0.05  # VAE rounding: a few pixels a level or two off
    frame_b[spots] = np.clip(frame_b[spots].astype(np.int16) + rng.integers(-2, 3, (int(spots.sum()), 3)), 0, 255).astype(np.uint8)
    yield "decoded", torch.from_numpy(frame_a), torch.from_numpy(frame_b)


def _scene(rng):
    """A 2x-wide textured landscape (gradients, shapes, grain): panned across it, frames change like a walk."""
    import numpy as np

    h, w = FRAME_HW
    y, x = np.mgrid[0:h, 0:2 * w].astype(np.float32)
    sky = np.stack([90 + 60 * y / h, 140 + 50 * y / h, 220 - 40 * y / h], axis=-1)
    ground = np.stack([70 + 30 * np.sin(x / 37.0), 110 + 40 * np.sin(x / 23.0 + y / 19.0), 50 + 20 * np.cos(y / 11.0)], axis=-1)
    img = np.where((y > h * 0.55 + 25 * np.sin(x / 80.0))[..., None], ground, sky)
    for _ in range(40):  # blocks and trees
        cy, cx, r = rng.integers(0, h), rng.integers(0, 2 * w), rng.integers(8, 40)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        img[inside] = rng.integers(20, 235, 3)
    img += rng.normal(0, 6, img.shape)  # texture
    return np.clip(img, 0, 255).astype(np.uint8)


def _frame(scene, f: int):
    w = FRAME_HW[1]
    start = (3 * f) % w
    return scene[:, start:start + w].copy()


if __name__ == "__main__":
    sys.exit(main())
