"""The FastVideo runner: FastVideo's own Waypoint pipeline, in-process, captured stage by stage.

    runner = FastVideoRunner(bundle="path/to/fastvideo-bundle", snapshot=...)
    runner.run(RunRequest(case, side="fastvideo", out_dir=..., device="cpu", prompt_from=upstream_capture))

Two generations of FastVideo's port are driven (`parity.fastvideo.generation`, detected, never configured):
- `stages` (PR #1058 head, 12c99dd42): `WaypointPipeline` composed of `prompt_encoding_stage`,
  `denoising_stage`, `decoding_stage`; run as `for stage in pipe.stages: batch = stage(batch, args)`,
  which is what FastVideo's generator runs inside its worker.
- `streaming` (640e654f3, 2e2375dc8): one pipeline with `streaming_reset(batch, args)` and
  `streaming_step(keyboard, mouse)`.

A run: the modules are built from the bundle (`build`), the pipeline is staged by FastVideo's own
`create_pipeline_stages`, the port's own text stage encodes the case's prompt once (`prompt`; kept
as `prompt.native_*` even when the shared prompt is what the model gets), then the pipeline runs
with the harness's hooks installed (`hooks`): frames and steps are taken from what the pipeline
does (its per-frame noise draw, its model calls, its own cache-pass routine), never from sigma
values, and each frame is written as it ends (`writing`). Capture never edits FastVideo: hooks and
wrappers exist for the run only, and on CPU FastVideo's compiled flex attention is swapped for its
torch SDPA path (head) or its attention backend selector pointed at SDPA (older revisions).

Errors: only FastVideo raising makes the run fail; the capture then keeps every frame that ended,
says `complete: false` with the error, and the run exits with a one-line error. A port that skips a
cache pass, adds a step or ends early produces a complete capture that shows it.

Options (`RunRequest.options`, `parity.fastvideo.options`): `precision`, `vae_precision`, `sigmas`, `attention`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parity import structure
from parity.capture import CapturePolicy, CaptureWriter
from parity.environment import describe_environment, pin_numerics
from parity.errors import UserError
from parity.fastvideo import logs
from parity.fastvideo.build import attention_notice, build_modules, cpu_attention, make_pipeline, resolve_bundle
from parity.fastvideo.calls import TransformerCalls
from parity.fastvideo.generation import Generation, detect_generation
from parity.fastvideo.hooks import Recorder
from parity.fastvideo.loaders import load_with_fastvideo, loaded_text_stage, use_fastvideo_loader
from parity.fastvideo.options import parse_options
from parity.fastvideo.prompt import own_encoding, pipeline_text_modules, prepare_prompt
from parity.fastvideo.source import fastvideo_revision, import_fastvideo
from parity.fastvideo.writing import FrameWriter, latent_shape, model_block, model_dtype, setup_block
from parity.runner import RunRequest

__all__ = ["FastVideoRunner", "Generation", "TransformerCalls", "detect_generation", "fastvideo_revision"]


class FastVideoRunner:
    name = "fastvideo"

    def __init__(self, bundle: str | Path | None = None, snapshot: str | Path | None = None,
                 trust_remote_code: bool = False, hf_cache_dir: str | None = None):
        self.bundle_spec, self.snapshot_spec = bundle, snapshot
        self.trust_remote_code, self.hf_cache_dir = trust_remote_code, hf_cache_dir

    def _bundle(self) -> Path:
        return resolve_bundle(self.bundle_spec, self.snapshot_spec, self.hf_cache_dir)

    # -- running ---------------------------------------------------------------------------------
    def run(self, request: RunRequest) -> Path:
        case = request.case
        source = str(case.path) if case.path else None
        opts = parse_options(dict(request.options), source)
        policy = CapturePolicy.parse(request.capture)
        bundle = self._bundle()
        device = request.device
        import_fastvideo()
        generation = detect_generation()
        pin_numerics(device)  # older FastVideo turns TF32 on at import

        with cpu_attention(device, opts["attention"], generation) as attention:
            use_loader, why = use_fastvideo_loader(opts, device, generation)
            built = load_with_fastvideo(bundle, opts, device, generation) if use_loader else build_modules(bundle, opts, device, generation)
            built.loader_choice = why
            pin_numerics(device)
            notice = attention_notice(attention, model_dtype(built.model))
            if notice:
                print(notice, file=sys.stderr, flush=True)
            if use_loader and request.prompt_from is None:
                prompt = loaded_text_stage(built)
            else:
                prompt = prepare_prompt(request, bundle, built, device)
            pipe, args = make_pipeline(built, generation, pipeline_text_modules(prompt, generation))
            try:
                native_prompt = own_encoding(pipe, args, generation, prompt, case.prompt, case.seed)
            except Exception as exc:  # FastVideo's own text stage raised: the run errors, nothing written
                raise UserError(f"FastVideo's text stage failed on the case's prompt ({type(exc).__name__}: {exc})") from exc
            writer = CaptureWriter(request.out_dir, {
                "side": request.side,
                "runner": {"name": self.name, "generation": generation.name},
                "options": opts,
                "case": case.describe(),
                "seed": case.seed,
                "device": device,
                "environment": describe_environment(device),
                "model": model_block(bundle, built),
                "setup": setup_block(built, attention),
                "native_prompt": {"ran": native_prompt is not None, "why_not": prompt.why_no_encoder},
                "fastvideo": {**fastvideo_revision(), "generation": generation.name,
                              "pipeline_config": {**built.resolved, "scheduler_sigmas": list(built.pc.scheduler_sigmas),
                                                  "precision": built.pc.precision,
                                                  "vae_precision": getattr(built.pc, "vae_precision", None)},
                              "attention": attention, "vae": built.vae_info,
                              "ignored_config_keys": built.ignored_config_keys, "weight_renames": built.renames,
                              "prompt_injection": generation.prompt_injection if request.prompt_from else None},
            }, policy=policy, background=device.startswith("cuda"))
            writer.set("alignment", {"noise": case.alignment.noise, "prompt": case.alignment.prompt, "prompt_source": prompt.source,
                                     "sigma_override": built.pc.scheduler_sigmas if opts["sigmas"] is not None else None})
            structure.write(request.out_dir, structure.describe({"transformer": built.model, "vae": built.vae}))
            logs.write_to(request.out_dir)
            frames = FrameWriter(writer, request, built, generation, prompt, native_prompt,
                                 latents_from_batch=generation.name == "stages")
            try:
                self._execute(request, built, generation, prompt, pipe, args, frames, policy)
            except Exception as exc:
                error = exc.one_line() if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                frames.finish(complete=False, error=error)  # every finished frame stays
                if isinstance(exc, UserError):
                    raise
                raise UserError(f"FastVideo pipeline failed ({error}); the frames it finished are in {request.out_dir}") from exc
            frames.finish(complete=True)
        return request.out_dir

    @contextlib.contextmanager
    def transformer_session(self, options: dict[str, Any], device: str):
        """FastVideo's transformer built and staged exactly as `run` builds it (same options, same
        attention choice, `create_pipeline_stages` applied), for single calls (module drill-down).
        Yields a `TransformerCalls`; the attention swap is undone on exit."""
        opts = parse_options(dict(options), None)
        bundle = self._bundle()
        import_fastvideo()
        generation = detect_generation()
        pin_numerics(device)
        with cpu_attention(device, opts["attention"], generation) as attention:
            built = build_modules(bundle, opts, device, generation)
            pin_numerics(device)
            no_prompt = SimpleNamespace(text_encoder=None, tokenizer=None)
            pipe, args = make_pipeline(built, generation, no_prompt)
            yield TransformerCalls(built, generation, pipe, args, attention, device)

    def _execute(self, request: RunRequest, built, generation: Generation, prompt, pipe, args, frames: FrameWriter,
                 policy: CapturePolicy) -> None:
        """Runs the pipeline as FastVideo's generator would (stages in order, or streaming_reset +
        streaming_step), with the recorder installed; frames are written as they end."""
        import torch

        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch

        case = request.case
        n = case.frames
        keyboard = torch.zeros(1, n, int(getattr(built.arch, "n_buttons", 256)))
        mouse = torch.zeros(1, n, 2)
        scroll = torch.zeros(1, n, 1)
        for f, c in enumerate(case.controls):
            for key in c.buttons:
                keyboard[0, f, key] = 1.0
            mouse[0, f] = torch.tensor(c.mouse)
            scroll[0, f, 0] = c.scroll  # raw wheel value: FastVideo takes the sign itself (head)

        extra = {}
        if prompt.emb is not None:
            extra = {"waypoint_prompt_emb": prompt.emb.to(request.device), "waypoint_prompt_pad_mask": prompt.mask.to(request.device)}
        fields = dict(data_type="t2v", prompt=None if prompt.emb is not None else case.prompt, seed=case.seed,
                      num_frames=n, keyboard_cond=keyboard, mouse_cond=mouse, scroll_cond=scroll, extra=extra)
        known = getattr(ForwardBatch, "__dataclass_fields__", fields)
        batch = ForwardBatch(**{k: v for k, v in fields.items() if k in known})

        shape = latent_shape(built.arch)
        rec = Recorder(case.seed, shape, shared=case.alignment.noise == "shared",
                       tokens_per_frame=int(getattr(built.arch, "tokens_per_frame", 0) or (shape[-1] * shape[-2]) // 4),
                       kv_mode=policy.kv, on_frame=frames.frame_ended, on_decode=frames.late_decode)
        frames.recorder = rec
        owner = next((s for s in pipe.stages if hasattr(s, "_cache_pass")), None) if generation.name == "stages" else None
        torch.manual_seed(case.seed)  # the global-RNG rule's seed: its draw is checked under shared noise too
        with rec.installed(built.model, built.vae, owner), torch.no_grad():
            try:
                if generation.name == "stages":
                    for stage in pipe.stages:
                        batch = stage(batch, args)
                        rec.end_frame()
                        if stage is owner:
                            frames.latents_ready(batch.latents)
                else:
                    pipe.streaming_reset(batch, args)
                    if prompt.emb is not None and generation.prompt_injection == "context":
                        pipe._streaming_ctx.prompt_emb = extra["waypoint_prompt_emb"]
                        pipe._streaming_ctx.prompt_pad_mask = extra["waypoint_prompt_pad_mask"]
                    pipe.streaming_step(keyboard, mouse)
                    rec.end_frame()
            except BaseException:
                rec.drop_open_frame()
                raise
