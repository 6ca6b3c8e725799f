"""Building FastVideo's Waypoint modules from a FastVideo-layout bundle, the same way on every device.

    bundle = resolve_bundle(bundle_spec, snapshot_spec, hf_cache_dir)
    built = build_modules(bundle, opts, device, generation)     # transformer, VAE, pipeline config
    pipe, args = make_pipeline(built, generation, prompt)        # staged by FastVideo's own create_pipeline_stages
    with cpu_attention(device, opts["attention"], generation): ...

FastVideo's classes are built directly (`transformer/config.json` + safetensors, `vae/`), as
FastVideo's own tests do: its loaders choose the device themselves and do not work without CUDA.
The checkpoint's architecture is copied into `pipeline_config.dit_config` (the denoising stage takes
the latent shape from there). Weights load strictly; a bundle written with the other MLP spelling
(fc1/fc2 vs fc_in/fc_out) is mapped to what the revision's model has.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parity.errors import UserError
from parity.fastvideo.generation import Generation


def sibling_bundle(snapshot) -> Path | None:
    """The `fastvideo/` bundle that `make-checkpoint --arch waypoint` writes beside its `overworld/`
    snapshot, used when no bundle is named."""
    if snapshot is None:
        return None
    sp = Path(snapshot)
    if sp.is_dir() and (sp.parent / "fastvideo" / "model_index.json").is_file():
        return (sp.parent / "fastvideo").resolve()
    return None


def bundle_status(bundle, snapshot) -> tuple[bool, str]:
    """(a FastVideo bundle is named or found, why not). Checked before FastVideo is imported, so a
    suite without a bundle skips the FastVideo pair instead of failing at its first case."""
    if bundle is not None or sibling_bundle(snapshot) is not None:
        return True, str(bundle or sibling_bundle(snapshot))
    return False, ("no FastVideo-layout bundle was given (pass --fastvideo-bundle; "
                   "`waypoint-parity make-checkpoint --arch waypoint` writes one beside its snapshot)")


def resolve_bundle(bundle_spec, snapshot_spec, hf_cache_dir) -> Path:
    """The FastVideo bundle: `bundle_spec`, or the `fastvideo/` sibling of a tiny checkpoint's snapshot."""
    from reference import snapshot as snap

    if bundle_spec is not None:
        path = snap.resolve_snapshot(bundle_spec, hf_cache_dir)
    else:
        path = sibling_bundle(snapshot_spec)
        if path is None:
            raise UserError("the FastVideo side needs a FastVideo-layout bundle: pass --fastvideo-bundle "
                            "(a folder with model_index.json, transformer/, vae/)")
    for rel in ("model_index.json", "transformer/config.json", "vae/config.json"):
        if not (path / rel).is_file():
            raise UserError(f"not a FastVideo bundle: {rel} is missing", path)
    return path


def build_modules(bundle: Path, opts: dict[str, Any], device: str, generation: Generation):
    """Transformer and VAE on `device` in the precisions of the (optionally overridden) pipeline config."""
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

    # Built on its device, as FastVideo's loader materialises it there: buffers computed at build time
    # (the noise conditioner's logspace frequencies) then hold the device's own values.
    with torch.device(device):
        model = wt.WaypointWorldModel(arch)
    state = snap.load_safetensors_folder(bundle / "transformer")
    state, renames = map_names(state, model, arch)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        raise UserError(f"bundle transformer does not load strictly into {type(model).__name__}: "
                        f"{len(missing)} missing ({missing[:3]}), {len(unexpected)} unexpected ({unexpected[:3]}), "
                        f"{len(mismatched)} shape-mismatched", bundle / "transformer")
    model.load_state_dict(state, strict=True)
    model = model.to(device=device, dtype=dit_dtype).eval()

    vae, vae_info = build_vae(bundle, generation, device, vae_dtype)
    return SimpleNamespace(model=model, vae=vae, pc=pc, arch=arch, config=config, resolved=resolved,
                           ignored_config_keys=ignored, renames=renames, vae_info=vae_info,
                           load_report={"strict": True, "missing": [], "unexpected": [], "mismatched": [],
                                        "tensors": len(state)})



def build_vae(bundle: Path, generation: Generation, device: str, vae_dtype):
    import torch

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
        with torch.device(device):
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
        with torch.device(device):
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


def make_pipeline(built, generation: Generation, prompt):
    """A `WaypointPipeline` around the built modules, staged by its own `create_pipeline_stages`
    (which sets the transformer's dtypes: the head keeps `denoise_step_emb` in fp32). Modules that
    FastVideo's own loader loaded come with their pipeline and FastVideoArgs already."""
    import torch

    if getattr(built, "pipe", None) is not None:
        return built.pipe, built.args

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



def map_names(state: dict, model, arch) -> tuple[dict, dict]:
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
def cpu_attention(device: str, choice: str, generation: Generation):
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



_NOTICED: set[str] = set()


def attention_notice(attention: str, dtype: str) -> str | None:
    """Said once per process and dtype when FastVideo's own attention runs: its compiled flex attention
    compiles and autotunes on the first run per dtype, which looks like a hang."""
    if attention != "FastVideo default" or dtype in _NOTICED:
        return None
    _NOTICED.add(dtype)
    return (f"FastVideo side: its default attention (compiled flex attention) compiles and autotunes on the first "
            f"run in {dtype}, which can take 1-3 minutes; `--option attention=sdpa` runs FastVideo's torch SDPA path instead")
