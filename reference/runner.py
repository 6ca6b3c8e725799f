"""The reference runner: a snapshot's own code, driven through the upstream per-frame protocol.

Per frame f (upstream profile; each step names the option that changes it):
1. noise x (1, 1, C, H, W) in `noise_dtype`: shared, or drawn by `noise_rule`
2. cache frozen; for each consecutive (s, s_next) of the schedule (`sigmas`, held in `sigma_dtype`):
   v = model(x, sigma=s, frame_timestamp=f, ...); x = x + (s_next - s) * v, all in the model dtype
3. cache pass (`cache_pass`, needs `cache_mode = ring`): cache unfrozen, one forward on the clean
   latent at sigma = 0 with the same controls and timestamp; output discarded, K/V written
4. decode: vae.decode(x.squeeze(1) cast by `decode_input_dtype`, / `latent_scale` + `latent_shift`)
   -> uint8 (H', W', 3)
Every tensor of every step goes to the capture, with the timestamp of every model call and, after
each cache pass, the KV cache in its logical view (`parity.kv_view`). The side's own noise draw is
made and recorded (`noise.native`, with the rule it follows) even when shared noise replaces it, and
its own prompt encoding even when a shared prompt is injected (`prompt.native_*`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity import alignment, native_noise, structure
from parity.capture import CapturePolicy, Protocol
from parity.kv_view import KVTracker, describe_cache
from parity.environment import describe_environment, pin_numerics
from parity.errors import UserError
from parity.runner import RunRequest
from reference import snapshot as snap
from reference import checks
from reference.options import ReferenceOptions, resolve_options
from reference.prompt import ENCODER_CLASSES, encode_prompt
from reference.world_engine_code import setup_summary


@dataclass
class LoadedSnapshot:
    path: Path
    config: dict[str, Any]
    model: Any
    vae: Any
    cache_class: Any
    trust: str
    load_report: snap.LoadReport
    encoder_dir: Path
    tokenizer_dir: Path
    latent_shape: tuple[int, ...] | None = None
    code: dict[str, Any] | None = None
    no_cache: Any = None
    """What the model gets as `kv_cache` when `cache_mode = none`: None for snapshot code (its
    attention skips a missing cache); world_engine's attention always calls `kv_cache.upsert`, so
    there it is the official script's stand-in cache (`upsert` returns this frame's K/V, no mask)."""


CODE_SOURCES = ("snapshot", "world_engine")
"""Where the model, KV cache and VAE code comes from: the snapshot's own .py files, or the
`world_engine` library (see `reference.world_engine_code`)."""


class ReferenceRunner:
    name = "reference"

    def __init__(self, snapshot: str | Path, profile: str = "upstream", trust_remote_code: bool = False,
                 text_encoder: str | Path | None = None, hf_cache_dir: str | None = None, code_source: str = "snapshot"):
        if code_source not in CODE_SOURCES:
            raise UserError(f"unknown code source {code_source!r}; expected one of {', '.join(CODE_SOURCES)}")
        self.code_source = code_source
        self.snapshot_spec, self.profile = snapshot, profile
        self.trust_remote_code, self.text_encoder = trust_remote_code, text_encoder
        self.hf_cache_dir = hf_cache_dir

    # -- loading ---------------------------------------------------------------------------------
    def load(self, options: ReferenceOptions, device: str) -> LoadedSnapshot:
        import torch

        path = snap.resolve_snapshot(self.snapshot_spec, self.hf_cache_dir)
        if self.code_source == "world_engine":
            return self._load_world_engine(path, options, device)
        if options.world_engine_setup != "none":
            raise UserError("option 'world_engine_setup' needs --code-source world_engine (the snapshot's own code has no "
                            "world_engine inference setup)", path)
        snap.check_layout(path)
        trust = snap.require_trust(path, self.trust_remote_code)
        config = snap.read_json(path / "transformer" / "config.json")
        checks.check_config(config, path / "transformer" / "config.json")
        model_module = snap.import_file(path / "transformer" / "model.py", "model")
        class_name = config.get("_class_name", "WorldModel")
        if not hasattr(model_module, class_name):
            raise UserError(f"transformer/model.py has no class {class_name!r} (named by _class_name)", path / "transformer" / "model.py")
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        try:
            with torch.device(device):  # built where it runs: at real size, CPU init alone takes a minute
                model = getattr(model_module, class_name)(**kwargs)
        except Exception as exc:
            raise UserError(f"{class_name}(**config) failed ({type(exc).__name__}: {exc})", path / "transformer" / "config.json") from None
        report = snap.load_weights(model, path / "transformer", options.strict_load, "transformer")
        model = model.to(device=device, dtype=getattr(torch, options.model_dtype)).eval()

        cache_module = snap.import_file(path / "before_denoise.py", "before_denoise")
        if not hasattr(cache_module, "StaticKVCache"):
            raise UserError("before_denoise.py has no StaticKVCache", path / "before_denoise.py")

        vae_config = snap.read_json(path / "vae" / "config.json")
        vae_module_name, vae_class = _auto_map_target(vae_config, path / "vae" / "config.json")
        vae_module = snap.import_file(path / "vae" / f"{vae_module_name}.py", "vae")
        if not hasattr(vae_module, vae_class):
            raise UserError(f"vae/{vae_module_name}.py has no class {vae_class!r}", path / "vae")
        vae = getattr(vae_module, vae_class)(**{k: v for k, v in vae_config.items() if not k.startswith("_") and k != "auto_map"})
        snap.load_weights(vae, path / "vae", True, "VAE")
        vae = vae.to(device=device, dtype=getattr(torch, options.vae_dtype)).eval()

        encoder_dir, tokenizer_dir = self._text_encoder_dirs(path)
        return LoadedSnapshot(path, config, model, vae, cache_module.StaticKVCache, trust, report, encoder_dir, tokenizer_dir)

    def _load_world_engine(self, path: Path, options: ReferenceOptions, device: str) -> LoadedSnapshot:
        from reference import world_engine_code

        config_path = path / "transformer" / "config.json"
        if not config_path.is_file():
            raise UserError("incomplete snapshot: transformer/config.json is missing", path)
        config = snap.read_json(config_path)
        parts, report = world_engine_code.load_parts(path, config, options, device, snap.load_weights, snap.read_json)
        encoder_dir, tokenizer_dir = self._text_encoder_dirs(path)
        return LoadedSnapshot(path, config, parts.model, parts.vae, parts.cache_factory,
                              "no snapshot code runs (model code from world_engine)", report, encoder_dir, tokenizer_dir,
                              latent_shape=parts.latent_shape, code=parts.code, no_cache=parts.no_cache)

    def _text_encoder_dirs(self, path: Path) -> tuple[Path, Path]:
        if self.text_encoder is None and (path / "text_encoder").is_dir():
            return path / "text_encoder", path / "tokenizer"
        te = snap.resolve_snapshot(self.text_encoder or "google/umt5-xl", self.hf_cache_dir)
        tok = te / "tokenizer" if (te / "tokenizer").is_dir() else te
        return (te / "text_encoder" if (te / "text_encoder").is_dir() else te), tok

    # -- running ---------------------------------------------------------------------------------
    def run(self, request: RunRequest) -> Path:
        import torch

        case = request.case
        options = resolve_options(self.profile, {**case.options, **request.options}, str(case.path) if case.path else None)
        device = request.device
        pin_numerics(device)
        loaded = self.load(options, device)
        model_dtype = getattr(torch, options.model_dtype)
        noise_dtype = getattr(torch, options.noise_dtype)
        sigmas = self._schedule(options, loaded).to(device)  # upstream models expect sigma on their device
        shape = loaded.latent_shape or (1, 1, loaded.config["channels"], loaded.config["height"], loaded.config["width"])

        native_prompt, native_why = None, None
        try:
            native_prompt = encode_prompt(case.prompt, options, loaded.encoder_dir, loaded.tokenizer_dir, device)
        except UserError as exc:
            if request.prompt_from is None:
                raise
            native_why = exc.one_line()  # the shared prompt still runs; the native stages are left out, said so
        if request.prompt_from is not None:
            emb, pad_mask = alignment.load_shared_prompt(request.prompt_from)
            emb, pad_mask = emb.to(device=device, dtype=model_dtype), pad_mask.to(device)
            prompt_source = f"injected from {request.prompt_from}"
        else:
            emb, pad_mask = native_prompt
            prompt_source = "encoded"

        # Everything that can fail on a bad input has run by now: only then is the folder created.
        from parity import budget, resume

        estimate = budget.estimate_capture(
            latent_shape=shape, frames=case.frames, steps=len(sigmas) - 1, model_dtype=options.model_dtype,
            sigma_dtype=options.sigma_dtype, cache_pass=options.cache_pass and options.cache_mode != "none",
            prompt_shape=tuple(emb.shape), decoded_shape=budget.decoded_shape(loaded.path, shape),
            kv_bytes=_kv_bytes(loaded.config, options.model_dtype, CapturePolicy.parse(request.capture).kv, shape, case.frames))
        print(budget.check_budget(estimate, request.out_dir, budget.budget_limits(request.max_capture_bytes, case.max_capture_bytes)))
        writer = resume.open_writer(request.out_dir, resume=request.resume, header={
            "side": request.side,
            "runner": {"name": self.name, "profile": self.profile, "code_source": self.code_source},
            "options": options.describe(),
            "case": case.describe(),
            "seed": case.seed,
            "device": device,
            "environment": describe_environment(device),
            "model": self._model_block(loaded, options),
            **({"purpose": request.purpose} if request.purpose else {}),
            "setup": setup_summary(self.code_source, options),
            "native_prompt": {"ran": native_prompt is not None, "why_not": native_why},
        }, policy=CapturePolicy.parse(request.capture), background=device.startswith("cuda"))
        started = time.perf_counter()
        writer.record_prompt(emb, pad_mask, native=native_prompt)

        protocol = Protocol(
            sigmas=[float(s) for s in sigmas.float().cpu()], sigma_dtype=options.sigma_dtype, steps=len(sigmas) - 1,
            noise_rule=alignment.SHARED_NOISE_RULE if case.alignment.noise == "shared" else _native_noise_rule(options),
            noise_dtype=options.noise_dtype, encoder_class=ENCODER_CLASSES[options.encoder_class],
            encoder_dtype=options.encoder_dtype, prompt_mask=options.mask_multiply, prompt_source=prompt_source,
            model_dtype=options.model_dtype, cache_mode=options.cache_mode,
            cache_pass=options.cache_pass and options.cache_mode != "none", vae_dtype=options.vae_dtype,
            decode_input_dtype=options.model_dtype if options.decode_input_dtype == "model" else options.decode_input_dtype,
            latent_scale=options.latent_scale, latent_shift=options.latent_shift, strict_load=options.strict_load,
            native_noise_rule=f"{options.noise_rule}: {native_noise.RULES[options.noise_rule]}",
        )
        writer.set("protocol", protocol.describe())
        writer.set("alignment", {"noise": case.alignment.noise, "prompt": case.alignment.prompt, "prompt_source": prompt_source})

        cache = loaded.cache_class(loaded.config, 1, model_dtype) if options.cache_mode == "ring" else loaded.no_cache
        if writer.policy.mode != "none":  # a bare benchmark run writes the manifest only
            structure.write(request.out_dir, structure.describe({"transformer": loaded.model, "vae": loaded.vae}, cache=cache))
        ring = cache if options.cache_mode == "ring" else None
        writer.set("kv_layout", describe_cache(ring))
        kv = None
        if ring is not None and writer.policy.kv != "off":
            kv = KVTracker(ring, _tokens_per_frame(loaded.config, shape), digest=writer.policy.kv == "digest")
        if options.noise_rule == "global":
            torch.manual_seed(case.seed)  # the native draw is made (and recorded) under shared noise too
        witness = native_noise.NoiseWitness(case.seed)
        teacher = None
        if request.teacher is not None:
            from parity.diagnose.teacher import TeacherInputs

            teacher = TeacherInputs.open(request.teacher, case.frames)
            writer.set("teacher_forced", {"teacher": str(request.teacher), "steps": teacher.steps})
        if options.world_engine_setup == "inference":
            loaded.model = torch.compile(loaded.model, fullgraph=True, mode="max-autotune", dynamic=False)
        elif options.compile_mode != "none":
            loaded.model = torch.compile(loaded.model, mode=options.compile_mode)
        frame_times: list[float] = []
        try:
            with torch.no_grad(), _sdpa_backend(options.sdpa_backend):
                for f in range(case.frames):
                    frame_started = time.perf_counter()
                    self._frame(f, request, options, loaded, cache, emb, pad_mask, sigmas, shape, noise_dtype, model_dtype, writer,
                                teacher, witness, kv)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize(device)
                    frame_times.append(round(time.perf_counter() - frame_started, 6))
        except UserError as exc:
            writer.set("error", exc.one_line())  # finished frames stay; the capture stays incomplete
            raise
        writer.close(complete=True, elapsed_s=round(time.perf_counter() - started, 3), frame_times_s=frame_times)
        return request.out_dir

    def _frame(self, f, request, options, loaded, cache, emb, pad_mask, sigmas, shape, noise_dtype, model_dtype, writer,
               teacher=None, witness=None, kv=None):
        import torch

        case, device = request.case, request.device
        controls = case.controls[f].tensors(model_dtype, device)
        timestamp = torch.tensor([[f]], dtype=torch.long, device=device)
        gen = None
        if options.noise_rule == "per_frame_generator":
            gen = torch.Generator(device=device).manual_seed(case.seed + f)
        native = torch.randn(shape, generator=gen, device=device, dtype=noise_dtype)
        native_note = witness.identify(native, f, gen) if witness is not None else None
        if case.alignment.noise == "shared":
            x = alignment.shared_noise(case.seed, f, shape, noise_dtype, device)
        else:
            x = native
        x = x.to(model_dtype)
        if teacher is not None:
            x = teacher.noise(f, device, model_dtype)
            sigmas = teacher.sigmas(f, device, sigmas.dtype)

        def call(latent, sigma, where):
            if sigma.dtype.itemsize < latent.dtype.itemsize:
                # a narrower schedule (the fp32 oracle keeps A's bf16 sigmas) is upcast exactly: world_engine's
                # model computes with sigma in the latent's dtype, as WorldEngine hands it over
                sigma = sigma.to(latent.dtype)
            return checks.call_model(loaded.model, where, request.out_dir,
                x=latent, sigma=sigma.reshape(1, 1), frame_timestamp=timestamp, prompt_emb=emb,
                prompt_pad_mask=pad_mask, mouse=controls["mouse"], button=controls["button"],
                scroll=controls["scroll"], kv_cache=cache,
            )

        with writer.frame(f) as rec:
            for name, t in controls.items():
                rec[f"controls.{name}"] = t
            rec["noise.native"] = native
            if native_note is not None:
                rec.note(native_noise.NOTE, native_note)
            rec["noise"] = x
            if cache is not None:
                cache.set_frozen(True)
            for i in range(len(sigmas) - 1):
                s, s_next = sigmas[i], sigmas[i + 1]
                if teacher is not None:
                    x = teacher.step_input(f, i, device, model_dtype)
                where = f"frame {f}, step {i}, step.velocity"
                v = call(x, s, where)
                checks.check_output(v, x.shape, where, request.out_dir, frames_kept=f)
                updated = x + (s_next - s).to(x.dtype) * v
                rec[f"step{i}.sigma"], rec[f"step{i}.timestamp"] = s, timestamp
                rec[f"step{i}.input"], rec[f"step{i}.velocity"], rec[f"step{i}.update"] = x, v, updated
                x = updated
            if teacher is not None:
                x = teacher.latent(f, device, model_dtype)
            rec["latent"] = x
            if cache is not None and options.cache_mode == "ring" and options.cache_pass:
                zero = torch.zeros((), dtype=sigmas.dtype, device=device)
                if kv is not None:
                    kv.before_pass()
                cache.set_frozen(False)
                out = call(x, zero, f"frame {f}, cache_pass")
                cache.set_frozen(True)
                rec["cache_pass.sigma"], rec["cache_pass.timestamp"] = zero, timestamp
                rec["cache_pass.input"], rec["cache_pass.output"] = x, out
                for layer, view in (kv.after_pass(f) if kv is not None else {}).items():
                    rec[f"kv{layer}.frames"], rec[f"kv{layer}.keys"], rec[f"kv{layer}.values"] = view.frames, view.keys, view.values
            z = x.squeeze(1)
            if options.decode_input_dtype != "model":
                z = z.to(getattr(torch, options.decode_input_dtype))
            if options.latent_scale != 1.0 or options.latent_shift != 0.0:
                z = z / options.latent_scale + options.latent_shift
            rec["decoded"] = loaded.vae.decode(z)

    def _schedule(self, options: ReferenceOptions, loaded: LoadedSnapshot):
        import torch

        config_path = loaded.path / "transformer" / "config.json"
        if options.sigmas == "config":
            values = loaded.config.get("scheduler_sigmas")
            if values is None:
                if not options.sigmas_fallback:
                    raise UserError(f"config has no scheduler_sigmas and the {self.profile} profile has no fallback; "
                                    "add scheduler_sigmas or pass --option sigmas=[...]", config_path)
                values = list(options.sigmas_fallback)
            else:
                values = checks.check_sigmas(values, config_path)
        else:
            values = list(options.sigmas)
        return torch.tensor(values, dtype=getattr(torch, options.sigma_dtype))

    def _model_block(self, loaded: LoadedSnapshot, options: ReferenceOptions) -> dict[str, Any]:
        from parity.tiny import is_tiny_checkpoint

        return {
            "snapshot": str(loaded.path),
            "revision": snap.snapshot_revision(loaded.path),
            "test_model": is_tiny_checkpoint(loaded.path),
            "description": "waypoint-parity tiny random-weight test model" if is_tiny_checkpoint(loaded.path) else "user snapshot",
            "code_trust": loaded.trust,
            "code": loaded.code or {"source": "snapshot"},
            "weights_sha256": snap.file_hashes(loaded.path),
            "transformer_config": loaded.config,
            "load_report": {"strict": options.strict_load, "missing": loaded.load_report.missing,
                            "unexpected": loaded.load_report.unexpected, "mismatched": loaded.load_report.mismatched},
        }


def _auto_map_target(vae_config: dict, path: Path) -> tuple[str, str]:
    target = (vae_config.get("auto_map") or {}).get("AutoModel")
    if not isinstance(target, str) or "." not in target:
        raise UserError("vae config has no auto_map.AutoModel of the form module.Class", path)
    module, cls = target.rsplit(".", 1)
    if not module.isidentifier():
        raise UserError(f"auto_map module {module!r} is not a plain file name", path)
    return module, cls


def _kv_bytes(config: dict[str, Any], dtype: str, mode: str, shape, frames: int) -> int:
    import torch

    from parity.kv_view import kv_capture_bytes

    try:
        return kv_capture_bytes({**config, "tokens_per_frame": _tokens_per_frame(config, shape)},
                                torch.empty((), dtype=getattr(torch, dtype)).element_size(), mode, frames)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0  # a config without the cache keys: the model's own cache is not one the view knows


def _tokens_per_frame(config: dict[str, Any], shape) -> int:
    """Tokens one frame adds to the KV cache: the config's `tokens_per_frame`, else the patched latent."""
    if config.get("tokens_per_frame"):
        return int(config["tokens_per_frame"])
    ph, pw = config.get("patch", [1, 1])
    return (int(shape[-2]) // int(ph)) * (int(shape[-1]) // int(pw))


def _native_noise_rule(options: ReferenceOptions) -> str:
    return f"native: {native_noise.RULES[options.noise_rule]}"


def _sdpa_backend(name: str):
    """Context pinning scaled_dot_product_attention to one kernel (`default`: torch's choice)."""
    import contextlib

    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name.upper())])
