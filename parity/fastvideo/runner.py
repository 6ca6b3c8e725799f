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
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parity import alignment, structure
from parity.fastvideo import logs
from parity.capture import CaptureWriter, Protocol
from parity.environment import describe_environment, pin_numerics
from parity.errors import UserError
from parity.runner import RunRequest

OPTION_KEYS = ("precision", "vae_precision", "sigmas", "attention")
_PRECISIONS = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


@dataclass(frozen=True)
class Generation:
    name: str
    """`stages` (PR head) or `streaming` (640e654f3, 2e2375dc8)."""
    prompt_injection: str
    """`extra` (pre-filled batch.extra) or `context` (set on the streaming context after reset)."""
    native_noise: str


def detect_generation() -> Generation:
    """Which pipeline this FastVideo has; UserError for anything that is not a Waypoint port we drive."""
    try:
        from fastvideo.pipelines.basic.waypoint import waypoint_pipeline as wp
    except Exception as exc:
        raise UserError(f"this FastVideo has no Waypoint pipeline (fastvideo.pipelines.basic.waypoint: "
                        f"{type(exc).__name__}: {exc}); use FastVideo PR #1058") from None
    pipe = getattr(wp, "WaypointPipeline", None)
    if pipe is None:
        raise UserError("fastvideo.pipelines.basic.waypoint has no WaypointPipeline")
    try:
        from fastvideo.pipelines.stages import waypoint_stages as ws
    except Exception:
        ws = None
    per_frame = "native: Generator(device).manual_seed(seed + frame), randn in the transformer dtype"
    if ws is not None and hasattr(ws, "WaypointDenoisingStage") and hasattr(ws, "WaypointDecodingStage"):
        return Generation("stages", "extra", per_frame)
    if hasattr(pipe, "streaming_reset") and hasattr(pipe, "streaming_step"):
        src = Path(wp.__file__).read_text()
        generator_noise = "manual_seed(" in src and "generator=" in src
        injection = "extra" if ws is not None and hasattr(ws, "WaypointTextEncodingStage") else "context"
        noise = per_frame if generator_noise else "native: global RNG (torch.randn without generator; harness seeds torch.manual_seed(seed) once)"
        return Generation("streaming", injection, noise)
    raise UserError("WaypointPipeline has neither the stage pipeline (WaypointDenoisingStage) nor "
                    "streaming_reset/streaming_step; this FastVideo revision is not supported")


def fastvideo_revision() -> dict[str, Any]:
    module = sys.modules.get("fastvideo")
    info: dict[str, Any] = {}
    if module is None or not getattr(module, "__file__", None):
        return info
    root = Path(module.__file__).resolve().parent.parent
    info["path"] = str(root)
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            info["commit"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    marker = root / "FASTVIDEO_COMMIT"
    if "commit" not in info and marker.is_file():
        info["commit"] = marker.read_text().strip()
    try:
        from importlib import metadata

        info["version"] = metadata.version("fastvideo")
    except Exception:
        info["version"] = getattr(module, "__version__", None)
    if "commit" not in info:
        info["commit"] = "unknown (no git metadata; put the commit in FASTVIDEO_COMMIT at the tree root)"
    return info


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


class FastVideoRunner:
    name = "fastvideo"

    def __init__(self, bundle: str | Path | None = None, snapshot: str | Path | None = None,
                 trust_remote_code: bool = False, hf_cache_dir: str | None = None):
        self.bundle_spec, self.snapshot_spec = bundle, snapshot
        self.trust_remote_code, self.hf_cache_dir = trust_remote_code, hf_cache_dir

    # -- inputs ----------------------------------------------------------------------------------
    def _bundle(self) -> Path:
        from reference import snapshot as snap

        if self.bundle_spec is not None:
            path = snap.resolve_snapshot(self.bundle_spec, self.hf_cache_dir)
        else:
            sibling = None
            if self.snapshot_spec is not None:
                sp = Path(self.snapshot_spec)
                if sp.is_dir() and (sp.parent / "fastvideo" / "model_index.json").is_file():
                    sibling = sp.parent / "fastvideo"
            if sibling is None:
                raise UserError("the FastVideo side needs a FastVideo-layout bundle: pass --fastvideo-bundle "
                                "(a folder with model_index.json, transformer/, vae/)")
            path = sibling.resolve()
        for rel in ("model_index.json", "transformer/config.json", "vae/config.json"):
            if not (path / rel).is_file():
                raise UserError(f"not a FastVideo bundle: {rel} is missing", path)
        return path

    @staticmethod
    def _options(raw: dict[str, Any], source) -> dict[str, Any]:
        from reference.options import check_schedule

        out: dict[str, Any] = {"precision": None, "vae_precision": None, "sigmas": None, "attention": "auto"}
        for key, value in raw.items():
            if key not in OPTION_KEYS:
                raise UserError(f"unknown FastVideo option {key!r}; known: {', '.join(OPTION_KEYS)}", source)
            if key in ("precision", "vae_precision"):
                if value not in _PRECISIONS:
                    raise UserError(f"option {key!r} must be one of {', '.join(_PRECISIONS)}, got {value!r}", source)
            elif key == "sigmas":
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                    raise UserError(f"option 'sigmas' must be a list of numbers, got {value!r}", source)
                try:
                    check_schedule(tuple(float(v) for v in value), "option 'sigmas'")
                except ValueError as exc:
                    raise UserError(str(exc), source) from None
                value = [float(v) for v in value]
            elif key == "attention" and value not in ("auto", "sdpa", "native"):
                raise UserError(f"option 'attention' must be auto, sdpa or native, got {value!r}", source)
            out[key] = value
        return out

    # -- building --------------------------------------------------------------------------------
    def _build(self, bundle: Path, opts: dict[str, Any], device: str, generation: Generation):
        import torch

        from reference import snapshot as snap
        from fastvideo.configs.models.dits.waypoint_transformer import WaypointArchConfig
        from fastvideo.configs.pipelines.waypoint import WaypointT2VConfig
        import fastvideo.models.dits.waypoint_transformer as wt
        from fastvideo.utils import PRECISION_TO_TYPE

        config = snap.read_json(bundle / "transformer" / "config.json")
        fields = WaypointArchConfig.__dataclass_fields__
        arch_kwargs = {k: (tuple(v) if k == "patch" else v) for k, v in config.items() if k in fields}
        ignored = sorted(k for k in config if k not in fields and not k.startswith("_"))
        arch = WaypointArchConfig(**arch_kwargs)
        pc = WaypointT2VConfig()
        pc.dit_config.arch_config = arch
        resolved = {
            "scheduler_sigmas_default": list(pc.scheduler_sigmas),
            "precision_default": pc.precision,
            "vae_precision_default": getattr(pc, "vae_precision", None),
            "text_encoder_precisions": list(getattr(pc, "text_encoder_precisions", ()) or ()),
            "checkpoint_scheduler_sigmas": config.get("scheduler_sigmas"),
            "scheduler_sigmas_source": "pipeline config (FastVideo never reads the checkpoint's)",
        }
        if opts["precision"]:
            pc.precision = opts["precision"]
        if opts["vae_precision"]:
            pc.vae_precision = opts["vae_precision"]
        if opts["sigmas"] is not None:
            pc.scheduler_sigmas = list(opts["sigmas"])
            resolved["scheduler_sigmas_source"] = "harness override (option sigmas)"
        dit_dtype = PRECISION_TO_TYPE[pc.precision]
        vae_dtype = PRECISION_TO_TYPE[getattr(pc, "vae_precision", "fp32")]

        model = wt.WaypointWorldModel(arch)
        state = snap.load_safetensors_folder(bundle / "transformer")
        state, renames = _map_names(state, model, arch)
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or mismatched:
            raise UserError(f"bundle transformer does not load strictly into {type(model).__name__}: "
                            f"{len(missing)} missing ({missing[:3]}), {len(unexpected)} unexpected ({unexpected[:3]}), "
                            f"{len(mismatched)} shape-mismatched", bundle / "transformer")
        model.load_state_dict(state, strict=True)
        model = model.to(device=device, dtype=dit_dtype).eval()

        vae, vae_info = self._build_vae(bundle, generation, device, vae_dtype)
        return SimpleNamespace(model=model, vae=vae, pc=pc, arch=arch, config=config, resolved=resolved,
                               ignored_config_keys=ignored, renames=renames, vae_info=vae_info,
                               load_report={"strict": True, "missing": [], "unexpected": [], "mismatched": [],
                                            "tensors": len(state)})

    def _build_vae(self, bundle: Path, generation: Generation, device: str, vae_dtype):
        from reference import snapshot as snap

        vae_config = snap.read_json(bundle / "vae" / "config.json")
        try:
            from fastvideo.configs.models.vaes import WorldEngineVAEConfig
            from fastvideo.models.vaes.world_engine_vae import WorldEngineVAE
        except ImportError:
            WorldEngineVAE = None
        if WorldEngineVAE is not None:
            vcfg = WorldEngineVAEConfig()
            for k, v in vae_config.items():
                if k in vcfg.arch_config.__dataclass_fields__:
                    setattr(vcfg.arch_config, k, tuple(v) if isinstance(v, list) else v)
            vcfg.arch_config.__post_init__()
            vae = WorldEngineVAE(vcfg)
            snap.load_weights(vae, bundle / "vae", True, "VAE")
            info = {"class": "fastvideo WorldEngineVAE (native)", "config": vae_config}
        else:
            # 640e654f3 / 2e2375dc8 have no native VAE: FastVideo imports the checkpoint's own
            # vae/ae_model.py (auto_map). Off CUDA the harness builds the same network from world_engine.
            from reference import world_engine_code as wec

            ok, why = wec.world_engine_status()
            if not ok:
                raise UserError("this FastVideo revision has no native VAE (it imports the checkpoint's VAE code); "
                                "the harness needs world_engine to build it: " + why)
            wec.import_world_engine()
            from world_engine.ae_nn import AutoEncoder

            enc, dec = wec.vae_configs(vae_config, bundle / "vae" / "config.json")
            ae = AutoEncoder(enc, dec)
            snap.load_weights(ae, bundle / "vae", True, "VAE")
            vae = wec.WorldEngineDecoder(ae, wec._uncompiled_decode())
            vae.config = SimpleNamespace(scaling_factor=vae_config.get("scaling_factor", 1.0),
                                         shift_factor=vae_config.get("shift_factor", None))
            info = {"class": "world_engine ae_nn.AutoEncoder (this FastVideo revision loads the checkpoint's VAE code)",
                    "config": vae_config}
        vae = vae.to(device=device, dtype=vae_dtype)
        vae.eval()
        return vae, info

    # -- running ---------------------------------------------------------------------------------
    def run(self, request: RunRequest) -> Path:
        import torch

        from parity.fastvideo import import_fastvideo

        case = request.case
        source = str(case.path) if case.path else None
        opts = self._options(dict(request.options), source)
        bundle = self._bundle()
        device = request.device
        import_fastvideo()
        generation = detect_generation()
        pin_numerics(device)  # older FastVideo turns TF32 on at import

        with _cpu_attention(device, opts["attention"], generation) as attention:
            built = self._build(bundle, opts, device, generation)
            pin_numerics(device)
            prompt = self._prompt(request, bundle, built, device)
            writer = CaptureWriter(request.out_dir, {
                "side": request.side,
                "runner": {"name": self.name, "generation": generation.name},
                "options": opts,
                "case": case.describe(),
                "seed": case.seed,
                "device": device,
                "environment": describe_environment(device),
                "model": self._model_block(bundle, built),
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
        self._write(writer, rec, request, built, generation, prompt, started)
        return request.out_dir

    @contextlib.contextmanager
    def transformer_session(self, options: dict[str, Any], device: str):
        """FastVideo's transformer built and staged exactly as `run` builds it (same options, same
        attention choice, `create_pipeline_stages` applied), for single calls (module drill-down).
        Yields a `TransformerCalls`; the attention swap is undone on exit."""
        from parity.fastvideo import import_fastvideo

        opts = self._options(dict(options), None)
        bundle = self._bundle()
        import_fastvideo()
        generation = detect_generation()
        pin_numerics(device)
        with _cpu_attention(device, opts["attention"], generation) as attention:
            built = self._build(bundle, opts, device, generation)
            pin_numerics(device)
            no_prompt = SimpleNamespace(text_encoder=None, tokenizer=None)
            pipe, args = _make_pipeline(built, generation, no_prompt)
            yield TransformerCalls(built, generation, pipe, args, attention, device)

    def _prompt(self, request: RunRequest, bundle: Path, built, device: str):
        import torch

        if request.prompt_from is not None:
            emb, mask = alignment.load_shared_prompt(request.prompt_from)
            return SimpleNamespace(emb=emb, mask=mask, source=f"injected from {request.prompt_from}",
                                   encoder_class="UMT5EncoderModel", encoder_dtype=_enc_dtype(built.pc), text_encoder=None,
                                   tokenizer=None)
        from transformers import AutoTokenizer, UMT5EncoderModel

        te, tok = bundle / "text_encoder", bundle / "tokenizer"
        if not te.is_dir() or not tok.is_dir():
            raise UserError("native prompt encoding needs text_encoder/ and tokenizer/ in the bundle "
                            "(or share the prompt: [alignment] prompt = \"shared\")", bundle)
        dtype = getattr(torch, _enc_dtype(built.pc))
        encoder = UMT5EncoderModel.from_pretrained(str(te), torch_dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(tok))
        return SimpleNamespace(emb=None, mask=None, source="encoded", encoder_class="UMT5EncoderModel",
                               encoder_dtype=_enc_dtype(built.pc), text_encoder=encoder, tokenizer=tokenizer)

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

        pipe, args = _make_pipeline(built, generation, prompt)
        structure.write(request.out_dir, structure.describe({"transformer": built.model, "vae": built.vae}))
        logs.write_to(request.out_dir)

        extra = {}
        if prompt.emb is not None:
            extra = {"waypoint_prompt_emb": prompt.emb.to(device), "waypoint_prompt_pad_mask": prompt.mask.to(device)}
        fields = dict(data_type="t2v", prompt=None if prompt.emb is not None else case.prompt, seed=case.seed,
                      num_frames=frames, keyboard_cond=keyboard, mouse_cond=mouse, scroll_cond=scroll, extra=extra)
        known = getattr(ForwardBatch, "__dataclass_fields__", fields)
        batch = ForwardBatch(**{k: v for k, v in fields.items() if k in known})

        rec = _Recorder(case.seed, frames, tuple(_latent_shape(built.arch)), shared=case.alignment.noise == "shared")
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

    # -- writing ---------------------------------------------------------------------------------
    def _write(self, writer: CaptureWriter, rec: "_Recorder", request: RunRequest, built, generation: Generation,
               prompt, started: float) -> None:
        import torch

        case = request.case
        frames = rec.frames()
        if len(frames) != case.frames:
            writer.close(complete=False, error=f"FastVideo produced {len(frames)} frames, the case asks for {case.frames}")
            raise UserError(f"FastVideo produced {len(frames)} frames, the case asks for {case.frames}")
        first = frames[0]["steps"][0] if frames[0]["steps"] else None
        if first is None:
            raise UserError("FastVideo made no transformer call")
        emb, mask = first["prompt_emb"], first["prompt_pad_mask"]
        if mask is None:
            mask = torch.zeros(emb.shape[:2], dtype=torch.bool)
        writer.record_prompt(emb, mask)

        sigmas = [float(s) for s in rec.sigma_tensor.float()]
        native = generation.native_noise
        noise_rule = (f"{alignment.SHARED_NOISE_RULE} (replaces FastVideo's own draw, {native})"
                      if case.alignment.noise == "shared" else native)
        vae_cfg = getattr(built.vae, "config", None)
        if generation.name == "stages":
            scale, shift = 1.0, 0.0  # the head's decoding stage hands batch.latents to vae.decode as they are
        else:
            raw_scale = getattr(vae_cfg, "scaling_factor", None) or 1.0
            raw_shift = getattr(vae_cfg, "shift_factor", None)
            scale, shift = float(raw_scale), float(raw_shift or 0.0)
        cache_kind = "ring" if generation.name == "stages" else "flat"
        protocol = Protocol(
            sigmas=sigmas, sigma_dtype=_dtype_name(rec.sigma_dtype), steps=len(sigmas) - 1,
            noise_rule=noise_rule, noise_dtype=_dtype_name(rec.noise_dtype),
            encoder_class=prompt.encoder_class, encoder_dtype=prompt.encoder_dtype, prompt_mask="bool",
            prompt_source=prompt.source, model_dtype=_model_dtype(built.model),
            cache_mode=cache_kind, cache_pass=any(fr["cache"] is not None for fr in frames),
            vae_dtype=_dtype_name(next(built.vae.parameters()).dtype),
            decode_input_dtype=_dtype_name(rec.decode_inputs[0].dtype) if rec.decode_inputs else "none",
            latent_scale=scale, latent_shift=shift, strict_load=True, native_noise_rule=native,
        )
        writer.set("protocol", protocol.describe())
        writer.set("alignment", {"noise": case.alignment.noise, "prompt": case.alignment.prompt,
                                 "prompt_source": prompt.source,
                                 "sigma_override": built.pc.scheduler_sigmas if built.resolved["scheduler_sigmas_source"].startswith("harness") else None})
        for f, fr in enumerate(frames):
            with writer.frame(f) as out:
                s0 = fr["steps"][0]
                out["controls.mouse"], out["controls.button"], out["controls.scroll"] = s0["mouse"], s0["button"], s0["scroll"]
                out["noise"] = rec.noises[f] if f < len(rec.noises) else s0["x"]
                latent = fr["cache"]["x"] if fr["cache"] is not None else _batch_latent(rec, f, s0["x"])
                for i, st in enumerate(fr["steps"]):
                    nxt = fr["steps"][i + 1]["x"] if i + 1 < len(fr["steps"]) else latent
                    out[f"step{i}.sigma"] = st["sigma"].reshape(-1)[0]
                    out[f"step{i}.input"], out[f"step{i}.velocity"], out[f"step{i}.update"] = st["x"], st["out"], nxt
                out["latent"] = latent
                if fr["cache"] is not None:
                    out["cache_pass.input"], out["cache_pass.output"] = fr["cache"]["x"], fr["cache"]["out"]
                if f < len(rec.decoded):
                    out["decoded"] = rec.decoded[f]
        writer.close(complete=True, elapsed_s=round(time.perf_counter() - started, 3))

    def _model_block(self, bundle: Path, built) -> dict[str, Any]:
        from parity.tiny.waypoint_arch import read_marker
        from reference import snapshot as snap

        marker = read_marker(bundle)
        return {
            "bundle": str(bundle),
            "revision": snap.snapshot_revision(bundle),
            "test_model": marker is not None,
            "description": "waypoint-parity tiny random-weight model of the real architecture" if marker else "user bundle",
            "weights_sha256": snap.file_hashes(bundle),
            "transformer_config": built.config,
            "load_report": built.load_report,
        }


def _make_pipeline(built, generation: Generation, prompt):
    """A `WaypointPipeline` around the built modules, staged by its own `create_pipeline_stages`
    (which sets the transformer's dtypes: the head keeps `denoise_step_emb` in fp32)."""
    import torch

    from fastvideo.pipelines.basic.waypoint import WaypointPipeline

    pipe = object.__new__(WaypointPipeline)
    modules = {"transformer": built.model, "vae": built.vae}
    if prompt.text_encoder is not None:
        modules.update(text_encoder=prompt.text_encoder, tokenizer=prompt.tokenizer)
    elif generation.prompt_injection == "extra":
        # the text stage returns early for prompt=None; the modules only have to exist
        modules.update(text_encoder=torch.nn.Identity(), tokenizer=object())
    pipe.modules = modules
    pipe._stages, pipe._stage_name_mapping = [], {}
    pipe._streaming_ctx, pipe._vae_cache = None, None
    pipe.post_init_called = True
    args = SimpleNamespace(pipeline_config=built.pc, seed=None)
    pipe.create_pipeline_stages(args)
    return pipe, args


class TransformerCalls:
    """Single transformer calls made the way this FastVideo revision's pipeline makes them: its own
    KV cache (created by its own `streaming_reset`), its own frozen flag, its forward context.

    - `stages` (head): the denoising stage's context and `WaypointKVCache`; `set_frozen(True)`
      around denoise calls; the cache pass is the stage's own `_cache_pass`.
    - `streaming` (640e654f3, 2e2375dc8): the pipeline's flat per-layer cache with its shared
      `frozen_ref`; the cache pass is a call with `update_cache=True` at sigma 0, unfrozen.
    """

    def __init__(self, built, generation: Generation, pipe, args, attention: str, device: str):
        self.built, self.generation, self.pipe, self.args = built, generation, pipe, args
        self.attention, self.device = attention, device
        self.model = built.model
        self.owner = None
        self.ctx = None

    def reset(self, prompt_emb, prompt_pad_mask, frames: int) -> None:
        """A fresh cache and streaming context, the prompt injected as the runner injects it."""
        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch

        extra = {"waypoint_prompt_emb": prompt_emb.to(self.device), "waypoint_prompt_pad_mask": prompt_pad_mask.to(self.device)}
        fields = dict(data_type="t2v", prompt=None, seed=0, num_frames=frames, extra=extra)
        known = getattr(ForwardBatch, "__dataclass_fields__", fields)
        batch = ForwardBatch(**{k: v for k, v in fields.items() if k in known})
        if self.generation.name == "stages":
            stage = next(s for s in self.pipe.stages if hasattr(s, "_cache_pass"))
            stage.streaming_reset(batch, self.args)
            self.owner, self.ctx, self.dtype = stage, stage._streaming_ctx, stage.dtype
        else:
            self.pipe.streaming_reset(batch, self.args)
            ctx = self.pipe._streaming_ctx
            if self.generation.prompt_injection == "context":
                ctx.prompt_emb, ctx.prompt_pad_mask = extra["waypoint_prompt_emb"], extra["waypoint_prompt_pad_mask"]
            self.owner, self.ctx, self.dtype = self.pipe, ctx, next(self.model.parameters()).dtype
        self.module = sys.modules[type(self.owner).__module__]
        self.prompt_emb = self.ctx.prompt_emb.to(device=self.device, dtype=self.dtype)
        self.prompt_pad_mask = self.ctx.prompt_pad_mask.to(self.device) if self.ctx.prompt_pad_mask is not None else None

    def _frozen(self, value: bool) -> None:
        cache = self.ctx.kv_cache
        if cache is None:
            return
        if hasattr(cache, "set_frozen"):
            cache.set_frozen(value)
        else:
            cache[0]["frozen_ref"][0] = value

    def _context(self, step: int):
        m = self.module
        return m.set_forward_context(current_timestep=step, attn_metadata=m.SDPAMetadata(current_timestep=step, attn_mask=None),
                                     forward_batch=None)

    def _controls(self, controls: dict) -> dict:
        return {k: controls[k].to(device=self.device, dtype=self.dtype) for k in ("mouse", "button", "scroll")}

    def denoise(self, x, sigma: float, frame: int, step: int, controls: dict):
        """One denoise call (cache frozen), returns the velocity."""
        import torch

        self._frozen(True)
        x = x.to(device=self.device, dtype=self.dtype)
        with self._context(step):
            return self.model(x=x, sigma=torch.full((x.shape[0], 1), float(sigma), device=self.device, dtype=self.dtype),
                              frame_timestamp=torch.full((x.shape[0], 1), frame, device=self.device, dtype=torch.long),
                              prompt_emb=self.prompt_emb, prompt_pad_mask=self.prompt_pad_mask, kv_cache=self.ctx.kv_cache,
                              **self._controls(controls))

    def cache_pass(self, x, frame: int, controls: dict):
        """The sigma = 0 pass that writes this frame's K/V, made as the revision makes it."""
        import torch

        x = x.to(device=self.device, dtype=self.dtype)
        ts = torch.full((x.shape[0], 1), frame, device=self.device, dtype=torch.long)
        c = self._controls(controls)
        if hasattr(self.owner, "_cache_pass"):
            self.owner._cache_pass(x, ts, c["mouse"], c["button"], c["scroll"])
            return
        if self.ctx.kv_cache is None:
            return
        self._frozen(False)
        try:
            with self._context(0):
                self.model(x=x, sigma=torch.zeros((x.shape[0], 1), device=self.device, dtype=self.dtype), frame_timestamp=ts,
                           prompt_emb=self.prompt_emb, prompt_pad_mask=self.prompt_pad_mask, kv_cache=self.ctx.kv_cache,
                           update_cache=True, **c)
        finally:
            self._frozen(True)


def _enc_dtype(pc) -> str:
    precs = list(getattr(pc, "text_encoder_precisions", ()) or ("fp32",))
    return _PRECISIONS.get(precs[0], precs[0])


def _model_dtype(model) -> str:
    """The dtype most of the transformer is in (the noise embedding may be kept in fp32)."""
    import collections

    counts = collections.Counter()
    for p in model.parameters():
        counts[p.dtype] += p.numel()
    return _dtype_name(counts.most_common(1)[0][0])


def _latent_shape(arch) -> tuple[int, int, int, int, int]:
    ph, pw = arch.patch if not isinstance(arch.patch, int) else (arch.patch, arch.patch)
    return (1, 1, int(arch.channels), int(arch.height) * int(ph), int(arch.width) * int(pw))


def _batch_latent(rec, f, fallback):
    if rec.batch_latents is not None:
        return rec.batch_latents[:, :, f].unsqueeze(1)
    return fallback


def _map_names(state: dict, model, arch) -> tuple[dict, dict]:
    """Apply this revision's `param_names_mapping`; a bundle written with the other MLP spelling
    (fc1/fc2 vs fc_in/fc_out) is mapped to what the model has. Returns (state, what was renamed)."""
    own = set(model.state_dict())
    mapping = dict(getattr(arch, "param_names_mapping", {}) or {})
    out, renamed = {}, 0
    for k, v in state.items():
        new = k
        for pat, rep in mapping.items():
            new = re.sub(pat, rep, new)
        if new not in own:
            for a, b in ((".mlp.fc_in.", ".mlp.fc1."), (".mlp.fc_out.", ".mlp.fc2."),
                         (".mlp.fc1.", ".mlp.fc_in."), (".mlp.fc2.", ".mlp.fc_out.")):
                if a in new and new.replace(a, b) in own:
                    new = new.replace(a, b)
                    break
        renamed += new != k
        out[new] = v
    return out, {"param_names_mapping": mapping, "tensors_renamed": renamed}


@contextlib.contextmanager
def _cpu_attention(device: str, choice: str, generation: Generation):
    """On CPU (or with attention = "sdpa"), FastVideo's torch SDPA path; restored afterwards."""
    use_sdpa = choice == "sdpa" or (choice == "auto" and not str(device).startswith("cuda"))
    if not use_sdpa:
        yield "FastVideo default"
        return
    import fastvideo.models.dits.waypoint_transformer as wt

    restore, what = [], []
    if hasattr(wt, "_flex_attention"):
        restore.append((wt, "_flex_attention", wt._flex_attention))
        wt._flex_attention = None
        what.append("waypoint_transformer._flex_attention = None (torch SDPA path)")
    if generation.name == "streaming":
        # older revisions build FastVideo attention layers through the platform's backend selector,
        # which has no CPU entry
        from fastvideo.platforms import current_platform

        cls = type(current_platform)
        restore.append((cls, "get_attn_backend_cls", cls.__dict__.get("get_attn_backend_cls")))
        cls.get_attn_backend_cls = classmethod(
            lambda c, selected_backend, head_size, dtype, *a, **k: "fastvideo.attention.backends.sdpa.SDPABackend")
        what.append("platform attention backend selector -> SDPABackend")
    what = "torch SDPA (harness: " + "; ".join(what) + ")"
    try:
        yield what
    finally:
        for owner, name, value in reversed(restore):
            if value is None:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, value)


class _Recorder:
    """Transformer calls, noise draws and decodes seen during one run."""

    def __init__(self, seed: int, frames: int, latent_shape: tuple, shared: bool):
        self.seed, self.n_frames, self.latent_shape, self.shared = seed, frames, latent_shape, shared
        self.calls: list[dict] = []
        self.noises: list = []
        self.decoded: list = []
        self.decode_inputs: list = []
        self.sigma_dtype = None
        self.noise_dtype = None
        self.batch_latents = None
        self.sigma_tensor = None

    @contextlib.contextmanager
    def installed(self, model, vae):
        import torch

        def pre(module, args, kwargs):
            if args:
                raise UserError("FastVideo called the transformer with positional arguments; the adapter expects keywords")
            c = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()
                 if k in ("x", "sigma", "frame_timestamp", "mouse", "button", "scroll", "update_cache")}
            if not self.calls:
                c["prompt_emb"] = kwargs.get("prompt_emb")
                c["prompt_pad_mask"] = kwargs.get("prompt_pad_mask")
                c["prompt_emb"] = c["prompt_emb"].detach().clone() if c["prompt_emb"] is not None else None
                c["prompt_pad_mask"] = c["prompt_pad_mask"].detach().clone() if c["prompt_pad_mask"] is not None else None
            self.calls.append(c)

        def post(module, args, kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.calls[-1]["out"] = out.detach().clone()

        latent_tail = self.latent_shape[-3:]
        original_randn = torch.randn

        def randn(*size, **kwargs):
            shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
            if len(shape) >= 3 and tuple(shape[-3:]) == latent_tail and kwargs.get("out") is None:
                frame = len(self.noises)
                dtype = kwargs.get("dtype") or torch.get_default_dtype()
                self.noise_dtype = dtype
                if self.shared:
                    torch.randn = original_randn  # shared_noise draws with torch.randn itself
                    try:
                        t = alignment.shared_noise(self.seed, frame, shape, dtype, kwargs.get("device") or "cpu")
                    finally:
                        torch.randn = randn
                else:
                    t = original_randn(*size, **kwargs)
                self.noises.append(t.detach().clone().reshape(self.latent_shape))
                return t
            return original_randn(*size, **kwargs)

        original_decode = vae.__dict__.get("decode")
        bound_decode = vae.decode

        def decode(latent, *a, **k):
            self.decode_inputs.append(latent.detach().clone())
            out = bound_decode(latent, *a, **k)
            frame = out.sample if hasattr(out, "sample") else out
            self.decoded.append(frame.detach().clone())
            return out

        h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = model.register_forward_hook(post, with_kwargs=True)
        torch.randn = randn
        vae.decode = decode
        try:
            yield self
        finally:
            torch.randn = original_randn
            h1.remove()
            h2.remove()
            if original_decode is None:
                with contextlib.suppress(AttributeError):
                    del vae.decode
            else:
                vae.decode = original_decode

    def frames(self) -> list[dict]:
        """Calls grouped per frame: denoise steps in order, then the cache pass (sigma 0 / update_cache)."""
        out: list[dict] = []
        current = None
        for c in self.calls:
            sigma = c["sigma"]
            is_cache = bool(c.get("update_cache")) or bool((sigma == 0).all())
            if current is None:
                current = {"steps": [], "cache": None}
                out.append(current)
            if is_cache:
                current["cache"] = c
                current = None
            else:
                current["steps"].append(c)
        return out
