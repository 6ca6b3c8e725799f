"""Real-size two-sided parity and cost on a GPU: upstream (world_engine code) vs FastVideo (its own loader).

    WORLD_ENGINE_SRC=... FASTVIDEO_SRC=... python benchmarks/real_size.py --out DIR [--frames 240 --every 8 --full 16]

In one process, on `make-checkpoint --arch waypoint --size real` (Waypoint-1-Small's dimensions, random
bf16 weights, drawn on the GPU), both sides bf16, shared noise and prompt. Steps, each timed and written
to DIR/summary.json as soon as it ends (a step that fails records its error; later steps still run):
1. checkpoint (or --checkpoint)                    -> seconds to write both layouts
2. parity, fully captured (KV caches as statistics, `kv:digest`: full K/V is ~0.46 GB a frame at this
   size): upstream --full frames, FastVideo the same, judged against the fp32 oracle (eager)
3. parity, long: upstream --frames frames with `every:K` capture, FastVideo the same frames, judged
   against the fp32 oracle (compiled: eager world_engine is ~1.6 s a frame at this size); compare +
   summary + HTML report time against both sides' generation time
4. upstream cost: the harness's loop without capture vs a bare loop over the same modules (no
   harness code), eager; then >= 50 frames alternating captured / not captured in one loop, each
   frame timed with CUDA events -> capture overhead ratio with its spread (stages only: the KV view
   is not captured in this loop)
5. FastVideo cost: FastVideo's own stage loop over the loaded pipeline, bare vs under the harness's hooks,
   as its example runs it and with its own compile (`enable_torch_compile`)
6. peak GPU memory of each side (net of what was allocated before it) and of the two-sided process
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

PROMPT = "A first-person gameplay video exploring a stylized world."


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, help="an existing real-size checkpoint folder (holding overworld/ and fastvideo/)")
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--every", type=int, default=8)
    p.add_argument("--full", type=int, default=16)
    p.add_argument("--alternate", type=int, default=60, help="frames of the alternating captured / bare loop")
    p.add_argument("--bare-frames", type=int, default=40)
    p.add_argument("--eager-frames", type=int, default=8, help="frames per loop of the eager upstream cost step (no alternation)")
    p.add_argument("--oracle", default="full,long", help="which parity steps get the fp32 oracle verdict: full, long, both or none")
    p.add_argument("--oracle-compile", default=None,
                   help="the long run's oracle: none (eager; cheaper below ~60 frames at the real size) or a compile mode "
                        "(default: the upstream side's)")
    p.add_argument("--skip", default="", help="comma-separated step names to leave out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--up-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="upstream option for every upstream run, e.g. compile_mode=default (eager world_engine runs "
                        "flex attention unfused: ~1.6 s a frame at the real size on an H200)")
    p.add_argument("--fv-long-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="FastVideo option for the long run and the cost step, e.g. offload=off")
    p.add_argument("--size", default="real", choices=("tiny", "real"), help="tiny: a CPU smoke test of this script")
    args = p.parse_args()

    import torch

    from parity.environment import pin_numerics

    args.out.mkdir(parents=True, exist_ok=True)
    device = args.device
    pin_numerics(device)
    cuda = device.startswith("cuda")
    summary: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
                     "size": args.size, "steps": {}}
    skip = set(filter(None, args.skip.split(",")))

    def step(name):
        def wrap(fn):
            if name in skip:
                return None
            _reset_peak(device)
            t0 = time.perf_counter()
            value = None
            try:
                value = fn()
                summary["steps"][name] = {"ok": True, "s": round(time.perf_counter() - t0, 2), **(value or {})}
            except Exception as exc:
                summary["steps"][name] = {"ok": False, "s": round(time.perf_counter() - t0, 2),
                                          "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            summary["steps"][name]["peak_gpu_gib"] = round(_peak(device), 3)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
            print(f"== {name}: {json.dumps({k: v for k, v in summary['steps'][name].items() if k != 'trace'}, default=str)[:1500]}",
                  flush=True)
            _reset_peak(device)
            return value
        return wrap

    ckpt = args.checkpoint or args.out / "ckpt"
    from reference.options import parse_cli_override

    up_opts = dict(parse_cli_override(t) for t in args.up_opt)
    fv_long = dict(parse_cli_override(t) for t in args.fv_long_opt)
    summary.update(upstream_options=up_opts, fastvideo_long_options=fv_long)

    @step("checkpoint")
    def _():
        if args.checkpoint and (ckpt / "overworld").is_dir() and (ckpt / "fastvideo").is_dir():
            return {"reused": str(ckpt)}
        from parity.tiny.waypoint_arch import make_waypoint_checkpoint

        make_waypoint_checkpoint(ckpt, size=args.size, device=device)
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        return {"bytes": size}

    snapshot, bundle = ckpt / "overworld", ckpt / "fastvideo"
    from parity.case import parse_case

    def case(frames):
        segments = [{"frames": [5, min(12, frames)], "mouse": [0.5, 0.2], "scroll": -3, "buttons": [17, 30]}] if frames > 6 else []
        return parse_case({"name": f"real{frames}", "prompt": PROMPT, "seed": 42, "frames": frames,
                           "controls": {"buttons": [17], "mouse": [0.1, -0.05], "segments": segments}}, None)

    def upstream(label, frames, capture="full,kv:digest", options=None):
        from parity.runner import RunRequest
        from reference.runner import ReferenceRunner

        out = args.out / label
        t0 = time.perf_counter()
        ReferenceRunner(snapshot, code_source="world_engine").run(
            RunRequest(case(frames), "upstream", out, device, dict(options or {}), capture=capture))
        m = json.loads((out / "manifest.json").read_text())
        ft = m["frame_times_s"]
        steady = statistics.median(ft[2:] or ft)
        return out, {"wall_s": round(time.perf_counter() - t0, 2), "generation_s": round(sum(ft), 3),
                     "frame_ms_median": round(1000 * steady, 2),
                     "generation_steady_s": round(steady * len(ft), 3),  # compile and warm-up left out
                     "first_frame_s": ft[0], "setup": m.get("setup")}

    def fastvideo(label, frames, prompt_from, options=None, capture="full,kv:digest"):
        from parity.fastvideo.runner import FastVideoRunner
        from parity.runner import RunRequest

        out = args.out / label
        t0 = time.perf_counter()
        FastVideoRunner(bundle=bundle, snapshot=snapshot).run(
            RunRequest(case(frames), "fastvideo", out, device, dict(options or {}), prompt_from, capture=capture))
        m = json.loads((out / "manifest.json").read_text())
        return out, {"wall_s": round(time.perf_counter() - t0, 2), "generation_s": m.get("elapsed_s"),
                     "setup": m.get("setup"), "attention": m["fastvideo"].get("attention")}

    oracle_steps = set(args.oracle.replace("both", "full,long").split(","))

    def compare(a, b, name, report=True, oracle_compile="none"):
        from parity import oracle
        from parity.capture import Capture
        from parity.compare import compare_captures
        from parity.output import summary_dict, write_outputs

        from parity.tolerances import parse_tolerances

        # first without the oracle (seconds), kept in summary.json at once: the fp32 oracle of a long
        # real-size run is minutes of compiling and generating, and the call may end inside it
        bf16 = parse_tolerances({f: {"rel_l2": 0.03, "max_abs": 0.125} for f in ("step.velocity", "cache_pass.output")})
        bounded = compare_captures(Capture.open(a), Capture.open(b), bf16)
        early = summary_dict(bounded)
        summary["steps"][f"{name}_fixed_bounds"] = {
            "verdict": early["verdict"], "first_divergence": (early["first_divergence"] or {}).get("explanation"),
            "worst_rel_l2": _worst(bounded)}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        o, oracle_info = None, None
        if name.removeprefix("cmp-") in oracle_steps:
            t0 = time.perf_counter()
            o = Capture.open(oracle.oracle_for(Capture.open(a), compile_mode=oracle_compile))
            ft = o.manifest.get("frame_times_s") or []
            oracle_info = {"wall_s": round(time.perf_counter() - t0, 2), "generation_s": round(sum(ft), 3),
                           "compile_mode": oracle_compile}
        t0 = time.perf_counter()
        result = compare_captures(Capture.open(a), Capture.open(b), oracle=o)
        write_outputs(result, args.out / name)
        compare_s = time.perf_counter() - t0
        report_s = 0.0
        if report:
            from parity.report import write_report

            t0 = time.perf_counter()
            write_report(result, args.out / name)
            report_s = time.perf_counter() - t0
        s = summary_dict(result)
        worst = _worst(result)
        ratios: dict = {}
        for st in result.stages:
            if st.oracle is not None and st.oracle.err_a > 0:
                ratios[st.key.family] = max(ratios.get(st.key.family, 0.0), round(st.oracle.ratio, 4))
        return {"oracle": oracle_info, "largest_oracle_ratio": ratios,
                "failing": [st.explain() for st in result.stages if not st.passed][:12],
                "verdict_bf16_bounds": summary_dict(bounded)["verdict"],
                "first_value_divergence_bf16_bounds": (summary_dict(bounded)["first_value_divergence"] or {}).get("explanation"),
                "verdict": s["verdict"], "first_divergence": (s["first_divergence"] or {}).get("explanation"),
                "first_value_divergence": (s["first_value_divergence"] or {}).get("explanation"),
                "config_diff": [[r.field, r.a, r.b] for r in result.config if r.differs],
                "worst_rel_l2": worst, "compare_s": round(compare_s, 2), "report_s": round(report_s, 2)}

    peaks = {}

    @step("parity_full")
    def _():
        base = _reset_peak(device)
        up, a = upstream("up-full", args.full, options=up_opts)
        peaks["upstream"] = _peak(device) - base
        base = _reset_peak(device)
        try:
            fv, b = fastvideo("fv-full", args.full, up)
        except Exception as exc:  # keep the upstream figures
            return {"upstream": a, "fastvideo_error": f"{type(exc).__name__}: {exc}"}
        peaks["fastvideo"] = _peak(device) - base
        return {"upstream": a, "fastvideo": b, "compare": compare(up, fv, "cmp-full")}

    @step("parity_long")
    def _():
        base = _reset_peak(device)
        up, a = upstream("up-long", args.frames, capture=f"every:{args.every},kv:digest", options=up_opts)
        up_abs = _peak(device)
        base_fv = _reset_peak(device)  # what the upstream side left allocated stays counted
        try:
            fv, b = fastvideo("fv-long", args.frames, up, options=fv_long, capture=f"every:{args.every},kv:digest")
        except Exception as exc:  # keep the upstream figures
            return {"upstream": a, "fastvideo_error": f"{type(exc).__name__}: {exc}"}
        fv_abs = _peak(device)
        peaks.update(upstream_long=up_abs - base, fastvideo_long=fv_abs - base_fv, left_by_upstream=base_fv - base,
                     two_sided=max(up_abs, fv_abs) - base)
        c = compare(up, fv, "cmp-long", oracle_compile=args.oracle_compile or up_opts.get("compile_mode", "none"))
        gen = a["generation_s"] + (b["generation_s"] or 0)
        c["compare_plus_report_over_generation"] = round((c["compare_s"] + c["report_s"]) / gen, 4) if gen else None
        # FastVideo's elapsed_s holds its own first-run attention autotune; upstream's steady figure drops its compile
        steady = a["generation_steady_s"] + (b["generation_s"] or 0)
        c["compare_plus_report_over_steady_generation"] = round((c["compare_s"] + c["report_s"]) / steady, 4) if steady else None
        return {"upstream": a, "fastvideo": b, "compare": c}

    @step("memory")
    def _():
        larger = max(peaks.get("upstream_long", 0), peaks.get("fastvideo_long", 0)) or max(peaks.get("upstream", 0), peaks.get("fastvideo", 0))
        return {k: round(v, 3) for k, v in peaks.items()} | (
            {"two_sided_over_larger_side": round(peaks["two_sided"] / larger, 4)} if larger and "two_sided" in peaks else {})

    @step("upstream_cost_compiled")
    def _():
        return upstream_cost(snapshot, case, device, args.bare_frames, args.alternate, args.out, compile_mode="default")

    @step("fastvideo_cost")
    def _():
        return fastvideo_cost(bundle, case, device, args.bare_frames, fv_long)

    @step("fastvideo_cost_compiled")
    def _():
        return fastvideo_cost(bundle, case, device, args.bare_frames, {**fv_long, "compile": "on"})

    @step("upstream_cost")
    def _():
        return upstream_cost(snapshot, case, device, args.eager_frames, 0, args.out, compile_mode="none")

    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "trace"} for k, v in summary["steps"].items()}, indent=1, default=str)[-6000:])
    return 0


def _worst(result) -> dict:
    """Largest rel_l2 of B vs A per stage family."""
    worst: dict = {}
    for st in result.stages:
        if st.metrics is not None:
            worst[st.key.family] = round(max(worst.get(st.key.family, 0.0), st.metrics.rel_l2), 6)
    return worst


def _reset_peak(device) -> float:
    """Frees what can be freed and restarts the peak count; returns what is still allocated (GiB)."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**30
    return 0.0


def _peak(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else 0.0


class _Timer:
    """CUDA events on a GPU (the device's own timeline), the host clock elsewhere."""

    def __init__(self, device):
        import torch

        self.cuda = device.startswith("cuda")
        self.device = device
        self.marks = []
        self.torch = torch

    def start(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def stop(self, start):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append((start, e))
        else:
            self.marks.append((start, time.perf_counter()))

    def ms(self) -> list[float]:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            return [s.elapsed_time(e) for s, e in self.marks]
        return [1000 * (e - s) for s, e in self.marks]


class _NullWriter:
    """A writer that keeps nothing: the harness's loop with no capture."""

    def frame(self, index):
        return contextlib.nullcontext({})


def upstream_cost(snapshot, case, device, bare_frames, alternate, out, compile_mode):
    """Harness loop (no capture) vs a bare loop over the same world_engine modules, then alternating
    captured / bare frames timed with CUDA events."""
    import torch

    from parity import alignment
    from parity.capture import CaptureWriter
    from parity.runner import RunRequest
    from reference.options import resolve_options
    from reference.runner import ReferenceRunner

    runner = ReferenceRunner(snapshot, code_source="world_engine")
    options = resolve_options("upstream", {"compile_mode": compile_mode})
    loaded = runner.load(options, device)
    if compile_mode != "none":
        loaded.model = torch.compile(loaded.model, mode=compile_mode)
    dtype = torch.bfloat16
    frames = max(bare_frames, alternate)
    c = case(frames)
    request = RunRequest(c, "upstream", out / f"alt-{compile_mode}", device)
    sigmas = runner._schedule(options, loaded).to(device)
    shape = loaded.latent_shape
    emb = torch.zeros(1, 512, loaded.config["prompt_embedding_dim"], device=device, dtype=dtype)
    pad = torch.zeros(1, 512, dtype=torch.bool, device=device)
    pad[:, 16:] = True

    def harness_loop(n, writer_for):
        cache = loaded.cache_class(loaded.config, 1, dtype)
        timer = _Timer(device)
        with torch.no_grad():
            for f in range(n):
                t = timer.start()
                runner._frame(f, request, options, loaded, cache, emb, pad, sigmas, shape, dtype, dtype, writer_for(f))
                timer.stop(t)
        return timer.ms()

    def bare_loop(n):
        """WorldEngine.gen_frame's body over the same modules: no harness code at all."""
        cache = loaded.cache_class(loaded.config, 1, dtype)
        model, vae = loaded.model, loaded.vae
        timer = _Timer(device)
        with torch.no_grad():
            for f in range(n):
                ctl = c.controls[f].tensors(dtype, device)
                ts = torch.tensor([[f]], dtype=torch.long, device=device)
                t = timer.start()
                x = alignment.shared_noise(c.seed, f, shape, dtype, device)
                cache.set_frozen(True)
                for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                    v = model(x=x, sigma=s.reshape(1, 1), frame_timestamp=ts, prompt_emb=emb, prompt_pad_mask=pad,
                              kv_cache=cache, **ctl)
                    x = x + (s_next - s) * v
                cache.set_frozen(False)
                model(x=x, sigma=torch.zeros((1, 1), dtype=dtype, device=device), frame_timestamp=ts, prompt_emb=emb,
                      prompt_pad_mask=pad, kv_cache=cache, **ctl)
                vae.decode(x.squeeze(1))
                timer.stop(t)
        return timer.ms()

    null = _NullWriter()
    result = {"compile_mode": compile_mode}
    warm = bare_loop(4)  # compile (if any), allocator, kernels
    result["warmup_first_frame_ms"] = round(warm[0], 1)
    bare = bare_loop(bare_frames)[2:]
    harness = harness_loop(bare_frames, lambda f: null)[2:]
    bare2 = bare_loop(bare_frames)[2:]
    result.update(bare_ms=_stats(bare), harness_nocapture_ms=_stats(harness), bare_again_ms=_stats(bare2),
                  harness_over_bare=round(statistics.median(harness) / statistics.median(bare + bare2) - 1, 4))
    if alternate:
        writer = CaptureWriter(out / f"alt-capture-{compile_mode}", {"side": "upstream"}, background=True)
        times = harness_loop(alternate, lambda f: writer if f % 2 == 0 else null)
        writer.close(complete=False)
        captured, plain = times[2::2], times[3::2]
        pairs = [cap - pl for cap, pl in zip(captured, plain)]
        result.update(alternating_captured_ms=_stats(captured), alternating_bare_ms=_stats(plain),
                      capture_overhead_ms_per_pair=_stats(pairs),
                      capture_overhead_ratio=round(statistics.median(pairs) / statistics.median(plain), 4))
    return result


def fastvideo_cost(bundle, case, device, frames, options=None):
    """FastVideo's own stage loop over its loaded pipeline: bare, then with the harness's recorder hooks."""
    import torch

    from parity.fastvideo.build import cpu_attention
    from parity.fastvideo.generation import detect_generation
    from parity.capture import CapturePolicy
    from parity.fastvideo.hooks import Recorder
    from parity.fastvideo.loaders import load_with_fastvideo
    from parity.fastvideo.options import parse_options
    from parity.fastvideo.source import import_fastvideo
    from parity.fastvideo.writing import latent_shape

    import_fastvideo()
    generation = detect_generation()
    opts = parse_options(dict(options or {}), None)
    from parity.fastvideo.build import build_modules, make_pipeline
    from types import SimpleNamespace

    from parity.fastvideo.loaders import use_fastvideo_loader

    with cpu_attention(device, "auto", generation):
        if use_fastvideo_loader(opts, device, generation)[0]:
            built = load_with_fastvideo(bundle, opts, device, generation)
        else:  # CPU smoke test of this script: the direct build
            built = build_modules(bundle, opts, device, generation)
            built.pipe, built.args = make_pipeline(built, generation, SimpleNamespace(text_encoder=None, tokenizer=None))
            built.loader, built.offload, built.module_dtypes, built.attention_detail = "direct", None, None, None
    from fastvideo.pipelines.pipeline_batch_info import ForwardBatch

    pipe, fargs = built.pipe, built.args
    c = case(frames)
    emb = torch.zeros(1, 512, int(built.arch.prompt_embedding_dim), device=device)
    pad = torch.zeros(1, 512, dtype=torch.bool, device=device)

    def run(hooked: bool) -> float:
        keyboard = torch.zeros(1, frames, 256)
        keyboard[..., 17] = 1
        batch = ForwardBatch(data_type="t2v", prompt=None, seed=42, num_frames=frames, keyboard_cond=keyboard,
                             mouse_cond=torch.zeros(1, frames, 2), scroll_cond=torch.zeros(1, frames, 1),
                             extra={"waypoint_prompt_emb": emb, "waypoint_prompt_pad_mask": pad})
        shape = tuple(latent_shape(built.arch))
        rec = Recorder(42, shape, shared=True, tokens_per_frame=int(built.arch.tokens_per_frame),
                       kv_mode=CapturePolicy.parse("full").kv, on_frame=lambda frame: None, on_decode=lambda *a: None)
        owner = next((s for s in pipe.stages if hasattr(s, "_cache_pass")), None)
        ctx = rec.installed(built.model, built.vae, owner) if hooked else contextlib.nullcontext()
        timer = _Timer(device)
        t = timer.start()
        with ctx, torch.no_grad():
            for stage in pipe.stages:
                batch = stage(batch, fargs)
        timer.stop(t)
        return timer.ms()[0] / frames

    first = run(False)  # flex attention compile / autotune, allocator
    bare = [run(False), run(False)]
    hooked = [run(True), run(True)]
    return {"first_run_ms_per_frame": round(first, 1), "bare_ms_per_frame": [round(x, 2) for x in bare],
            "harness_hooks_ms_per_frame": [round(x, 2) for x in hooked],
            "hooks_over_bare": round(statistics.median(hooked) / statistics.median(bare) - 1, 4),
            "setup": {"loader": built.loader, "offload": built.offload, "module_dtypes": built.module_dtypes,
                      "attention": built.attention_detail}}


def _stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [xs[0], statistics.median(xs), xs[-1]]
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "q1": round(q[0], 3), "q3": round(q[2], 3)}


if __name__ == "__main__":
    sys.exit(main())
