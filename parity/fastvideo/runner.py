"""The FastVideo runner: FastVideo's own Waypoint pipeline, in-process, captured stage by stage.

    runner = FastVideoRunner(bundle="path/to/fastvideo-bundle", snapshot=...)
    runner.run(RunRequest(case, side="fastvideo", out_dir=..., device="cpu", prompt_from=upstream_capture))

Two generations of FastVideo's port are driven (detected, never configured):
- `stages` (PR #1058 head, 12c99dd42): `WaypointPipeline` composed of `prompt_encoding_stage`,
  `denoising_stage`, `decoding_stage`; run as `for stage in pipe.stages: batch = stage(batch, args)`,
  which is what FastVideo's generator runs inside its worker.
- `streaming` (640e654f3, 2e2375dc8): one pipeline with `streaming_reset(batch, args)` and
  `streaming_step(keyboard, mouse)`.
Anything else is a UserError naming what was found.

Capture never edits FastVideo. For the duration of the run only, the harness installs
- a forward pre-hook and a forward hook (with kwargs) on the transformer: every call is recorded
  (model input, sigma, timestamp, controls, prompt, output); a call at sigma = 0 (or with
  `update_cache=True`) is the cache pass, the others are denoise steps in order;
- an instance attribute over `vae.decode` that records its input and its uint8 output (the
  head's decoding stage then divides by 255; the capture keeps the uint8 as returned);
- a wrapper over `torch.randn` that recognises the per-frame latent draw by its shape: with shared
  noise it returns `parity.alignment.shared_noise(seed, frame, ...)` in the requested dtype instead,
  with native noise it passes the call through and records what was drawn;
- on CPU only: FastVideo's compiled flex attention swapped for its torch SDPA path (head), or
  FastVideo's attention backend selector pointed at its SDPA backend (older revisions).
All are removed in `finally`, and the capture records each of them.

Modules: on every device the harness builds FastVideo's classes directly from a FastVideo-layout
bundle (`transformer/config.json` + safetensors, `vae/`), as FastVideo's own tests do: its
loaders choose the device themselves and do not work without CUDA. The checkpoint's architecture
is copied into `pipeline_config.dit_config` (the denoising stage takes the latent shape from there).
Prompt: `prompt_from` (shared) pre-fills `batch.extra` (head, 640e654f3) or the streaming context
(2e2375dc8); without it the bundle's `text_encoder/` runs through FastVideo's text-encoding stage
(transformers' UMT5EncoderModel in the encoder precision of FastVideo's pipeline config).

Options (`RunRequest.options`): `precision` (transformer, "bf16" or "fp32"; default: the pipeline
config's), `vae_precision`, `sigmas` (override of `pipeline_config.scheduler_sigmas`), `attention`
("auto": SDPA on CPU, FastVideo's default elsewhere; "sdpa"; "native").
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parity import structure
from parity.capture import CaptureWriter
from parity.fastvideo import logs
from parity.environment import describe_environment, pin_numerics
from parity.errors import UserError
from parity.fastvideo.build import attention_notice, build_modules, cpu_attention, make_pipeline, resolve_bundle
from parity.fastvideo.calls import TransformerCalls
from parity.fastvideo.generation import Generation, detect_generation
from parity.fastvideo.hooks import Recorder
from parity.fastvideo.options import parse_options
from parity.fastvideo.prompt import prepare_prompt
from parity.fastvideo.source import fastvideo_revision, import_fastvideo
from parity.fastvideo.writing import latent_shape, model_block, model_dtype, setup_block, write_capture
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
        bundle = self._bundle()
        device = request.device
        import_fastvideo()
        generation = detect_generation()
        pin_numerics(device)  # older FastVideo turns TF32 on at import

        with cpu_attention(device, opts["attention"], generation) as attention:
            built = build_modules(bundle, opts, device, generation)
            pin_numerics(device)
            notice = attention_notice(attention, model_dtype(built.model))
            if notice:
                print(notice, file=sys.stderr, flush=True)
            prompt = prepare_prompt(request, bundle, built, device)
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
                "fastvideo": {**fastvideo_revision(), "generation": generation.name,
                              "pipeline_config": {**built.resolved, "scheduler_sigmas": list(built.pc.scheduler_sigmas),
                                                  "precision": built.pc.precision,
                                                  "vae_precision": getattr(built.pc, "vae_precision", None)},
                              "attention": attention, "vae": built.vae_info,
                              "ignored_config_keys": built.ignored_config_keys, "weight_renames": built.renames,
                              "prompt_injection": generation.prompt_injection if request.prompt_from else None},
            })
            started = time.perf_counter()
            try:
                rec = self._execute(request, built, generation, prompt, device)
            except UserError:
                writer.close(complete=False)
                raise
            except Exception as exc:
                writer.close(complete=False, error=f"{type(exc).__name__}: {exc}")
                raise UserError(f"FastVideo pipeline failed ({type(exc).__name__}: {exc})") from exc
        write_capture(writer, rec, request, built, generation, prompt, started)
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

    def _execute(self, request: RunRequest, built, generation: Generation, prompt, device: str):
        import torch

        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch

        case = request.case
        frames = case.frames
        keyboard = torch.zeros(1, frames, int(getattr(built.arch, "n_buttons", 256)))
        mouse = torch.zeros(1, frames, 2)
        scroll = torch.zeros(1, frames, 1)
        for f, c in enumerate(case.controls):
            for key in c.buttons:
                keyboard[0, f, key] = 1.0
            mouse[0, f] = torch.tensor(c.mouse)
            scroll[0, f, 0] = c.scroll  # raw wheel value: FastVideo takes the sign itself (head)

        pipe, args = make_pipeline(built, generation, prompt)
        structure.write(request.out_dir, structure.describe({"transformer": built.model, "vae": built.vae}))
        logs.write_to(request.out_dir)

        extra = {}
        if prompt.emb is not None:
            extra = {"waypoint_prompt_emb": prompt.emb.to(device), "waypoint_prompt_pad_mask": prompt.mask.to(device)}
        fields = dict(data_type="t2v", prompt=None if prompt.emb is not None else case.prompt, seed=case.seed,
                      num_frames=frames, keyboard_cond=keyboard, mouse_cond=mouse, scroll_cond=scroll, extra=extra)
        known = getattr(ForwardBatch, "__dataclass_fields__", fields)
        batch = ForwardBatch(**{k: v for k, v in fields.items() if k in known})

        rec = Recorder(case.seed, frames, tuple(latent_shape(built.arch)), shared=case.alignment.noise == "shared")
        if case.alignment.noise == "native":
            torch.manual_seed(case.seed)  # only the global-RNG revision reads it
        with rec.installed(built.model, built.vae), torch.no_grad():
            if generation.name == "stages":
                for stage in pipe.stages:
                    batch = stage(batch, args)
                rec.batch_latents = batch.latents
            else:
                pipe.streaming_reset(batch, args)
                if prompt.emb is not None and generation.prompt_injection == "context":
                    pipe._streaming_ctx.prompt_emb = extra["waypoint_prompt_emb"]
                    pipe._streaming_ctx.prompt_pad_mask = extra["waypoint_prompt_pad_mask"]
                pipe.streaming_step(keyboard, mouse)
        if not rec.calls:
            raise UserError("FastVideo ran without calling the transformer")
        rec.sigma_dtype = rec.calls[0]["sigma"].dtype
        rec.sigma_tensor = torch.tensor(built.pc.scheduler_sigmas, dtype=rec.sigma_dtype)
        return rec

