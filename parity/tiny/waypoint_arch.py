"""Tiny random-weight checkpoint of the REAL Waypoint architecture, in both layouts.

    make_waypoint_checkpoint(out_dir, seed=0)  ->  {"snapshot": out_dir/overworld, "bundle": out_dir/fastvideo}

The model classes are the real ones, imported at run time (never copied here): world_engine's
`WorldModel` and `ae_nn.AutoEncoder` when `world_engine` is importable (WORLD_ENGINE_SRC or installed),
else FastVideo's `WaypointWorldModel` and `WorldEngineVAE` (FASTVIDEO_SRC or installed). Both share
one state-dict layout up to FastVideo's MLP rename (`.mlp.fc1.` -> `.mlp.fc_in.`, `.mlp.fc2.` ->
`.mlp.fc_out.`) and the VAE's weight-norm parametrizations are identical, so the same tensors
are written twice:

    overworld/                         Overworld snapshot layout (model code from world_engine)
      transformer/config.json          WorldModel config, scheduler_sigmas = the real 5 values
      transformer/diffusion_pytorch_model.safetensors     world_engine names (fc1/fc2)
      vae/config.json  vae/diffusion_pytorch_model.safetensors
      text_encoder/  tokenizer/        tiny UMT5 (d_model = prompt_embedding_dim) + word-level tokenizer
      waypoint_parity_tiny_waypoint.json   marker: seed, classes and code revisions used
    fastvideo/                         FastVideo bundle layout
      model_index.json                 WaypointPipeline
      transformer/config.json  transformer/diffusion_pytorch_model.safetensors   fc_in/fc_out names
      vae/config.json (FastVideo WorldEngineVAE arch keys)  vae/diffusion_pytorch_model.safetensors
      text_encoder/  tokenizer/        same files as the snapshot's

There is no `transformer/model.py` or `before_denoise.py`: run the reference side with
`code_source="world_engine"` (`--code-source world_engine`).

The config keeps every structural feature of Waypoint-1-Small at a tiny size: 4 layers, layers 0
and 2 global (dilated ring, window 8 frames, dilation 2) and 1 and 3 local (window 2 frames), so both
ring kinds wrap well within 20 frames; cross-attention and control (MLP-fusion) layers every 3rd
layer (0 and 3); gated attention; GQA (2 query heads, 1 KV head); wan noise conditioning; 4x4 latent
(2x2 tokens of 2x2 patches). The head size is 64 = 128 / 2 because FastVideo hard-codes a
cross-attention head size of 64 and a temporal RoPE that equals world_engine's only at head size 64;
another head size makes the two differ by construction (see docs/fastvideo.md).
Every parameter, including those initialised to zero (CFG null embeddings, gates, biases), is redrawn
from one seeded generator in sorted-name order; buffers are left as built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from parity.errors import UserError

MARKER = "waypoint_parity_tiny_waypoint.json"
GENERATOR_VERSION = 1
from parity.tiny.checkpoint import SCHEDULER_SIGMAS  # the real checkpoint's schedule, in one place

TRANSFORMER_CONFIG = {
    "_class_name": "WorldModel",
    "d_model": 128,
    "n_heads": 2,
    "n_kv_heads": 1,
    "n_layers": 4,
    "mlp_ratio": 2,
    "channels": 16,
    "height": 2,
    "width": 2,
    "patch": [2, 2],
    "tokens_per_frame": 4,
    "n_frames": 512,
    "local_window": 2,
    "global_window": 8,
    "global_attn_period": 2,
    "global_pinned_dilation": 2,
    "global_attn_offset": 0,
    "value_residual": False,
    "gated_attn": True,
    "n_buttons": 256,
    "ctrl_conditioning": "mlp_fusion",
    "ctrl_conditioning_period": 3,
    "ctrl_cond_dropout": 0.0,
    "prompt_conditioning": "cross_attention",
    "prompt_conditioning_period": 3,
    "prompt_embedding_dim": 128,
    "prompt_cond_dropout": 0.0,
    "noise_conditioning": "wan",
    "scheduler_sigmas": SCHEDULER_SIGMAS,
}

VAE_ARCH = {
    "channels": 3,
    "latent_channels": 16,
    "encoder_ch_0": 16,
    "encoder_ch_max": 32,
    "encoder_blocks_per_stage": [1, 1],
    "decoder_ch_0": 16,
    "decoder_ch_max": 32,
    "decoder_blocks_per_stage": [1, 1],
    "skip_logvar": False,
}
"""Decoder: 4x4 latent -> two up stages -> resized to 360x640 by the decoder itself."""

TEXT_ENCODER_OVERRIDES = {"d_model": 128, "d_kv": 32, "num_heads": 4, "d_ff": 256}

REAL_SIZE = {
    "transformer": {"d_model": 2560, "n_heads": 40, "n_kv_heads": 20, "n_layers": 22, "mlp_ratio": 5,
                    "height": 16, "width": 16, "tokens_per_frame": 256, "n_frames": 4096,
                    "local_window": 16, "global_window": 128, "global_attn_period": 4, "global_pinned_dilation": 8,
                    "prompt_embedding_dim": 2048},
    "vae": {"encoder_ch_0": 64, "encoder_ch_max": 256, "encoder_blocks_per_stage": [1, 1, 1, 1],
            "decoder_ch_0": 128, "decoder_ch_max": 1024, "decoder_blocks_per_stage": [1, 1, 1, 1]},
    "text_encoder": {"d_model": 2048, "d_kv": 64, "num_heads": 32, "d_ff": 512, "num_layers": 2},
}
"""`--size real`: Waypoint-1-Small's dimensions (transformer/config.json of the real snapshot: 2560 wide,
40 / 20 KV heads, 22 layers, 16x16 tokens of 2x2 patches = a 16x32x32 latent, 256 tokens per frame,
windows 16 local / 128 global at dilation 8, every 4th layer global), the real VAE (FastVideo's
`WorldEngineVAEArchConfig` defaults: 4 stages, 64..256 encoder / 128..1024 decoder channels), and a
2-layer UMT5 of the real width (2048). Random weights, stored in bf16 (the model runs in bf16)."""
SIZES = ("tiny", "real")


def configs(size: str = "tiny") -> tuple[dict, dict, dict]:
    """(transformer config, VAE arch, text-encoder overrides) of a checkpoint size."""
    if size not in SIZES:
        raise UserError(f"unknown checkpoint size {size!r}; expected one of {', '.join(SIZES)}")
    if size == "tiny":
        return dict(TRANSFORMER_CONFIG), dict(VAE_ARCH), dict(TEXT_ENCODER_OVERRIDES)
    return ({**TRANSFORMER_CONFIG, **REAL_SIZE["transformer"]}, {**VAE_ARCH, **REAL_SIZE["vae"]},
            {**TEXT_ENCODER_OVERRIDES, **REAL_SIZE["text_encoder"]})

MLP_RENAMES = ((r"\.mlp\.fc1\.", ".mlp.fc_in."), (r"\.mlp\.fc2\.", ".mlp.fc_out."))


def to_fastvideo_names(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for pat, rep in MLP_RENAMES:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def to_world_engine_names(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        k = k.replace(".mlp.fc_in.", ".mlp.fc1.").replace(".mlp.fc_out.", ".mlp.fc2.")
        out[k] = v
    return out


def available_builder() -> tuple[str, str]:
    """("world_engine" | "fastvideo", where): which real classes can build the checkpoint."""
    from reference.world_engine_code import world_engine_status

    ok, where = world_engine_status()
    if ok:
        return "world_engine", where
    from parity.fastvideo.source import fastvideo_src_status

    ok_fv, where_fv = fastvideo_src_status()
    if ok_fv:
        return "fastvideo", where_fv
    raise UserError("--arch waypoint needs the real model classes: " + where + "; or " + where_fv)


def make_waypoint_checkpoint(out_dir: str | Path, seed: int = 0, builder: str | None = None, size: str = "tiny",
                             device: str = "cpu") -> dict[str, Path]:
    """Both layouts of one random-weight model. `device` is where the weights are built and drawn: at
    the real size, `cuda` takes seconds where the CPU takes minutes (the same seed gives other
    values on another device; the marker records which)."""
    configs(size)  # a bad size fails before anything is written
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError("refusing to write a checkpoint into a non-empty folder", out_dir)
    builder, where = (builder, "") if builder else available_builder()
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    transformer_sd, vae_sd, provenance = _build_states(builder, seed, size, device)
    provenance["found_at"] = where
    _write(staging, seed, transformer_sd, vae_sd, provenance, size)
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(staging, out_dir)
    return {"snapshot": out_dir / "overworld", "bundle": out_dir / "fastvideo"}


def _randomise_parameters(module, gen) -> None:
    """Every parameter redrawn in sorted-name order (zero-initialised ones included)."""
    import math

    import torch

    params = dict(module.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            if p.ndim >= 2:
                new = torch.randn(p.shape, generator=gen, device=gen.device) / math.sqrt(math.prod(p.shape[1:]))
                if name.endswith("original0"):  # weight-norm magnitude g: keep it O(1) and positive
                    new = 0.5 + 0.5 * torch.rand(p.shape, generator=gen, device=gen.device)
            elif name.endswith("weight") or name.endswith("scale"):
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=gen.device)
            else:
                new = 0.1 * torch.randn(p.shape, generator=gen, device=gen.device)
            p.copy_(new.to(p.dtype))


def _build_states(builder: str, seed: int, size: str = "tiny", device: str = "cpu"):
    import torch

    transformer_config, vae_arch, _ = configs(size)
    gen = torch.Generator(device=device).manual_seed(seed)
    if builder == "world_engine":
        from reference.world_engine_code import import_world_engine, model_config, vae_configs, world_engine_revision

        import_world_engine()
        from world_engine.ae_nn import AutoEncoder
        from world_engine.model import WorldModel

        with torch.device(device):
            model = WorldModel(model_config(transformer_config))
        _randomise_parameters(model, gen)
        transformer_sd = to_world_engine_names(model.state_dict())
        enc, dec = vae_configs(vae_arch, Path(f"<{size}>"))
        with torch.device(device):
            ae = AutoEncoder(enc, dec)
        _randomise_parameters(ae, gen)
        vae_sd = ae.state_dict()
        provenance = {"builder": "world_engine", "transformer_class": "world_engine.model.WorldModel",
                      "vae_class": "world_engine.ae_nn.AutoEncoder", "code": world_engine_revision()}
    elif builder == "fastvideo":
        from parity.fastvideo.source import fastvideo_revision, import_fastvideo

        import_fastvideo()
        import fastvideo.models.dits.waypoint_transformer as wt
        from fastvideo.configs.models.dits.waypoint_transformer import WaypointArchConfig

        fields = WaypointArchConfig.__dataclass_fields__
        arch = WaypointArchConfig(**{k: (tuple(v) if k == "patch" else v) for k, v in transformer_config.items() if k in fields})
        with torch.device(device):
            model = wt.WaypointWorldModel(arch)
        _randomise_parameters(model, gen)
        transformer_sd = to_world_engine_names(model.state_dict())
        try:
            from fastvideo.configs.models.vaes import WorldEngineVAEConfig
            from fastvideo.models.vaes.world_engine_vae import WorldEngineVAE
        except ImportError:
            raise UserError("this FastVideo revision has no native WorldEngineVAE; build the checkpoint with world_engine "
                            "(set WORLD_ENGINE_SRC)") from None
        vcfg = WorldEngineVAEConfig()
        for k, v in vae_arch.items():
            setattr(vcfg.arch_config, k, tuple(v) if isinstance(v, list) else v)
        with torch.device(device):
            vae = WorldEngineVAE(vcfg)
        _randomise_parameters(vae, gen)
        vae_sd = vae.state_dict()
        provenance = {"builder": "fastvideo", "transformer_class": "fastvideo WaypointWorldModel",
                      "vae_class": "fastvideo WorldEngineVAE", "code": fastvideo_revision()}
    else:
        raise UserError(f"unknown builder {builder!r}; expected world_engine or fastvideo")
    # clone: world_engine ties the cond-head projections across blocks; every name is stored (strict loads
    # need them all) with the same values
    # the real size is stored in bf16 (the model runs in bf16; fp32 would be 9 GB a layout)
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    transformer_sd = {k: v.detach().to("cpu", dtype).clone() for k, v in transformer_sd.items()}
    vae_sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in vae_sd.items()}
    provenance.update(size=size, device=str(device), weight_dtype=str(dtype).removeprefix("torch."))
    return transformer_sd, vae_sd, provenance


def _write(root: Path, seed: int, transformer_sd: dict, vae_sd: dict, provenance: dict, size: str = "tiny") -> None:
    from parity.tiny.checkpoint import TEXT_ENCODER_CONFIG, _randomised, _save, _write_json, _write_tokenizer

    snap, bundle = root / "overworld", root / "fastvideo"
    for d in (snap / "transformer", snap / "vae", bundle / "transformer", bundle / "vae"):
        d.mkdir(parents=True)

    # text encoder + tokenizer (written once, copied into the bundle)
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    vocab = _write_tokenizer(snap / "tokenizer")
    transformer_config, vae_arch, te_overrides = configs(size)
    te_config = dict(TEXT_ENCODER_CONFIG, **te_overrides, vocab_size=len(vocab))
    (snap / "text_encoder").mkdir()
    _write_json(snap / "text_encoder" / "config.json", te_config)
    encoder = UMT5EncoderModel(UMT5Config(**te_config))
    _save(_randomised(encoder.state_dict(), torch.Generator().manual_seed(seed + 1), skip_tied=True),
          snap / "text_encoder" / "model.safetensors")
    shutil.copytree(snap / "text_encoder", bundle / "text_encoder")
    shutil.copytree(snap / "tokenizer", bundle / "tokenizer")

    # transformer: world_engine names in the snapshot, FastVideo names in the bundle
    _write_json(snap / "transformer" / "config.json", transformer_config)
    _save(transformer_sd, snap / "transformer" / "diffusion_pytorch_model.safetensors")
    fv_config = dict(transformer_config, _class_name="WaypointWorldModel")
    _write_json(bundle / "transformer" / "config.json", fv_config)
    _save(to_fastvideo_names(transformer_sd), bundle / "transformer" / "diffusion_pytorch_model.safetensors")

    # VAE: one state dict, world_engine key spellings in the snapshot config, FastVideo's in the bundle
    vae_common = {"_class_name": "WorldEngineVAE", "sample_size": [360, 640], "scaling_factor": 1.0, "shift_factor": 0.0}
    _write_json(snap / "vae" / "config.json", dict(vae_common, channels=vae_arch["channels"],
                                                   latent_channels=vae_arch["latent_channels"],
                                                   ch_0=vae_arch["decoder_ch_0"], ch_max=vae_arch["decoder_ch_max"],
                                                   encoder_ch_0=vae_arch["encoder_ch_0"], encoder_ch_max=vae_arch["encoder_ch_max"],
                                                   encoder_blocks_per_stage=vae_arch["encoder_blocks_per_stage"],
                                                   decoder_blocks_per_stage=vae_arch["decoder_blocks_per_stage"],
                                                   skip_logvar=vae_arch["skip_logvar"]))
    _save(vae_sd, snap / "vae" / "diffusion_pytorch_model.safetensors")
    _write_json(bundle / "vae" / "config.json", dict(vae_common, **vae_arch, scale_factor=1.0))
    _save(vae_sd, bundle / "vae" / "diffusion_pytorch_model.safetensors")

    _write_json(bundle / "model_index.json", {
        "_class_name": "WaypointPipeline", "_diffusers_version": "0.0.0",
        "transformer": ["diffusers", "WaypointWorldModel"], "vae": ["diffusers", "WorldEngineVAE"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    })
    marker = {
        "what": f"waypoint-parity {size} random-weight model of the real Waypoint architecture; not Overworld's weights",
        "size": size,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "arch": "waypoint",
        "model_code": "world_engine (run the reference side with --code-source world_engine)",
        "built_with": provenance,
        "transformer_tensors": len(transformer_sd),
        "vae_tensors": len(vae_sd),
    }
    _write_json(snap / MARKER, marker)
    _write_json(bundle / MARKER, marker)


def read_marker(folder: Path) -> dict | None:
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
