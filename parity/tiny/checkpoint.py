"""Writes the tiny random-weight checkpoint in Overworld's snapshot layout.

    transformer/config.json                  WorldModel config incl. scheduler_sigmas (the real ones)
    transformer/model.py                     this package's snapshot/model.py
    transformer/diffusion_pytorch_model.safetensors
    before_denoise.py                        StaticKVCache(config, batch_size, dtype)
    vae/config.json  vae/ae_model.py  vae/diffusion_pytorch_model.safetensors
    text_encoder/    a 2-layer UMT5 encoder (transformers layout)
    tokenizer/       an offline word-level tokenizer (tokenizer.json)
    waypoint_parity_tiny.json               marker: seed, and the sha256 of every code file

The same seed gives the same bytes. Every parameter is drawn from one seeded generator in sorted
name order, so weights that a module would initialise to zero or one are random too.
`hf_cache=True` lays the folder out as `models--Org--Name/snapshots/<rev>/` with `refs/main`,
so `huggingface_hub.snapshot_download(repo, local_files_only=True)` finds it like a real snapshot.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from importlib import resources
from pathlib import Path

from parity.errors import UserError

TINY_REPO_ID = "Overworld/Waypoint-1-Small"
MARKER = "waypoint_parity_tiny.json"
GENERATOR_VERSION = 1
CODE_FILES = {
    "transformer/model.py": "model.py",
    "before_denoise.py": "before_denoise.py",
    "vae/ae_model.py": "ae_model.py",
}
"""Snapshot path -> file in parity/tiny/snapshot/ that is copied there."""

SCHEDULER_SIGMAS = [1.0, 0.8609585762023926, 0.729332447052002, 0.3205108940601349, 0.0]

TRANSFORMER_CONFIG = {
    "_class_name": "WorldModel",
    "d_model": 64,
    "n_heads": 4,
    "n_kv_heads": 2,
    "n_layers": 4,
    "mlp_ratio": 2,
    "channels": 16,
    "height": 32,
    "width": 32,
    "patch": [2, 2],
    "tokens_per_frame": 256,
    "n_frames": 4096,
    "local_window": 4,
    "global_window": 8,
    "global_attn_period": 2,
    "global_pinned_dilation": 2,
    "n_buttons": 256,
    "prompt_embedding_dim": 32,
    "n_scenes": 8,
    "posterior_beta": 20.0,
    "residual_scale": 0.1,
    "scheduler_sigmas": SCHEDULER_SIGMAS,
}
"""Real latent shape (16, 32, 32) and patching; small width and windows so rings wrap by frame 8."""

REAL_SIZE = {
    "transformer": {"d_model": 2560, "n_heads": 40, "n_kv_heads": 20, "n_layers": 22, "mlp_ratio": 5, "local_window": 16,
                    "global_window": 128, "global_attn_period": 4, "global_pinned_dilation": 8, "prompt_embedding_dim": 2048},
    "vae": {"hidden_channels": 64, "sample_size": [360, 640]},
    "text_encoder": {"d_model": 2048, "d_kv": 64, "d_ff": 512, "num_heads": 32, "num_layers": 2},
}
"""`--size real`: Waypoint-1-Small's transformer dimensions (2560 wide, 22 layers, windows 16/128 at
dilation 8), the real 360x640 output, and a shallow encoder of the real width, for timing and memory.
Weights are stored in bf16 (the model runs in bf16; fp32 would be 10 GB)."""
SIZES = ("tiny", "real")

VAE_CONFIG = {
    "_class_name": "WorldEngineVAE",
    "auto_map": {"AutoModel": "ae_model.WorldEngineVAE"},
    "latent_channels": 16,
    "hidden_channels": 16,
    "sample_size": [180, 320],
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
}

TEXT_ENCODER_CONFIG = {
    "architectures": ["UMT5EncoderModel"],
    "model_type": "umt5",
    "vocab_size": 0,  # set from the tokenizer
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    "tie_word_embeddings": False,
}

_WORDS = (
    "a an the of and or in on at to from with into over under up down left right forward back "
    "first person first-person gameplay video game exploring explore stylized world walk walking run "
    "running look looking turn turning scroll jump camera view forest city desert snow castle river "
    "mountain sky cave dungeon bright dark light night day sunny foggy green blue red yellow small large "
    "stone wood grass water road bridge tower house tree trees player character moving slowly quickly"
).split()
_SYMBOLS = list(".,!?;:'\"-()[]<>/&") + list("abcdefghijklmnopqrstuvwxyz0123456789")


def default_checkpoint_dir() -> Path:
    """Where `make parity` keeps the built-in checkpoint (override with WAYPOINT_PARITY_CACHE)."""
    root = os.environ.get("WAYPOINT_PARITY_CACHE")
    return Path(root) if root else Path.cwd() / ".cache" / "waypoint-parity"


def configs(size: str = "tiny") -> tuple[dict, dict, dict]:
    """(transformer, vae, text encoder) configs of a checkpoint size."""
    if size not in SIZES:
        raise UserError(f"unknown checkpoint size {size!r}; expected one of {', '.join(SIZES)}")
    if size == "tiny":
        return dict(TRANSFORMER_CONFIG), dict(VAE_CONFIG), dict(TEXT_ENCODER_CONFIG)
    return ({**TRANSFORMER_CONFIG, **REAL_SIZE["transformer"]}, {**VAE_CONFIG, **REAL_SIZE["vae"]},
            {**TEXT_ENCODER_CONFIG, **REAL_SIZE["text_encoder"]})


def ensure_checkpoint(root: Path | None = None, seed: int = 0) -> Path:
    """The built-in checkpoint folder, generated on first use."""
    # The folder name carries the hash of the shipped code, so an upgrade of the harness gets a new
    # checkpoint instead of one whose code no longer matches (which would not be trusted).
    code = hashlib.sha256(b"".join(_code_source(src) for src in sorted(CODE_FILES.values())) + repr(TRANSFORMER_CONFIG).encode())
    folder = (root or default_checkpoint_dir()) / f"tiny-seed{seed}-{code.hexdigest()[:10]}"
    if not is_tiny_checkpoint(folder):
        if folder.exists():
            shutil.rmtree(folder)  # a half-written generation; ours to replace
        make_checkpoint(folder, seed=seed)
    return folder


def make_checkpoint(out_dir: str | Path, seed: int = 0, hf_cache: bool = False, repo_id: str = TINY_REPO_ID,
                    size: str = "tiny") -> Path:
    """Write the tiny checkpoint; returns the snapshot folder. Refuses a non-empty `out_dir`."""
    configs(size)  # validates the size before anything is written
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError("refusing to write a checkpoint into a non-empty folder", out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    _write_snapshot(staging, seed, size)
    if hf_cache:
        revision = _tree_digest(staging)[:40]
        repo_dir = staging.parent / f".{out_dir.name}.repo"
        if repo_dir.exists():
            shutil.rmtree(repo_dir)
        snap = repo_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
        snap.parent.mkdir(parents=True)
        os.replace(staging, snap)
        refs = repo_dir / f"models--{repo_id.replace('/', '--')}" / "refs"
        refs.mkdir()
        (refs / "main").write_text(revision)  # no trailing newline, as huggingface_hub writes it
        staging = repo_dir
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(staging, out_dir)
    if hf_cache:
        return out_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
    return out_dir


def is_tiny_checkpoint(snapshot: Path) -> bool:
    """True when `snapshot` carries our marker and its code files are byte-identical to the ones this
    package ships, so trusting it runs nothing but our own code."""
    marker = snapshot / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text()).get("code_sha256", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    for rel, src in CODE_FILES.items():
        path = snapshot / rel
        shipped = _sha256(_code_source(src))
        if not path.is_file() or _sha256(path.read_bytes()) != shipped or recorded.get(rel) != shipped:
            return False
    return True


def _code_source(name: str) -> bytes:
    return resources.files("parity.tiny").joinpath("snapshot", name).read_bytes()


def _write_snapshot(root: Path, seed: int, size: str = "tiny") -> None:
    import torch

    transformer_config, vae_config, text_encoder_config = configs(size)
    weight_dtype = torch.float32 if size == "tiny" else torch.bfloat16

    (root / "transformer").mkdir(parents=True)
    (root / "vae").mkdir()
    for rel, src in CODE_FILES.items():
        (root / rel).write_bytes(_code_source(src))

    vocab = _write_tokenizer(root / "tokenizer")
    te_config = dict(text_encoder_config, vocab_size=len(vocab))
    _write_json(root / "transformer" / "config.json", transformer_config)
    _write_json(root / "vae" / "config.json", vae_config)
    (root / "text_encoder").mkdir()
    _write_json(root / "text_encoder" / "config.json", te_config)

    gen = torch.Generator().manual_seed(seed)
    model_ns = _load_code(root / "transformer" / "model.py", "tiny_model")
    with torch.device("meta"):  # shapes only: the real size would otherwise hold 10 GB of fp32 init
        model = model_ns.WorldModel(**{k: v for k, v in transformer_config.items() if not k.startswith("_")})
    _save(_randomised(model.state_dict(), gen, dtype=weight_dtype), root / "transformer" / "diffusion_pytorch_model.safetensors")
    vae_ns = _load_code(root / "vae" / "ae_model.py", "tiny_vae")
    vae = vae_ns.WorldEngineVAE(**{k: v for k, v in vae_config.items() if not k.startswith("_") and k != "auto_map"})
    _save(_randomised(vae.state_dict(), gen), root / "vae" / "diffusion_pytorch_model.safetensors")

    from transformers import UMT5Config, UMT5EncoderModel

    encoder = UMT5EncoderModel(UMT5Config(**te_config))
    _save(_randomised(encoder.state_dict(), gen, skip_tied=True), root / "text_encoder" / "model.safetensors")

    marker = {
        "what": "waypoint-parity tiny random-weight test model; not Overworld's weights or code",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "code_sha256": {rel: _sha256(_code_source(src)) for rel, src in CODE_FILES.items()},
    }
    _write_json(root / MARKER, marker)


def _randomised(state: dict, gen, skip_tied: bool = False, dtype=None) -> dict:
    """Every tensor redrawn from `gen` in sorted-name order. Scale ~ 1/sqrt(fan_in) for matrices,
    so activations stay O(1) through the random network."""
    import torch

    out = {}
    seen = {}
    for name in sorted(state):
        t = state[name]
        if skip_tied and t.device.type != "meta" and t.data_ptr() in seen:
            continue  # transformers ties shared embeddings; save the storage once
        seen[t.data_ptr()] = name
        if name == "scene_bank":
            new = procedural_scenes(t.shape, gen)
        elif t.ndim >= 2:
            fan_in = math.prod(t.shape[1:])
            new = torch.randn(t.shape, generator=gen) / math.sqrt(fan_in)
        elif name.endswith("weight"):  # norm scales
            new = 1.0 + 0.1 * torch.randn(t.shape, generator=gen)
        else:
            new = 0.02 * torch.randn(t.shape, generator=gen)
        out[name] = new.to(dtype or torch.float32).contiguous()
    return out


def procedural_scenes(shape, gen):
    """(K, C, H, W) latent scenes: a few random gratings per channel (edges and texture at every
    frequency up to Nyquist) plus a little white noise, each scene at unit RMS. Averaging two of them
    visibly lowers high-frequency energy, which is what the blur evidence measures."""
    import torch

    K, C, H, W = shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    n_gratings = 6
    freq = torch.rand((K, C, n_gratings, 2), generator=gen) * 0.5  # cycles per latent pixel, up to Nyquist
    phase = torch.rand((K, C, n_gratings), generator=gen) * 2 * math.pi
    amp = torch.randn((K, C, n_gratings), generator=gen)
    arg = 2 * math.pi * (freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy) + phase[..., None, None]
    scenes = (amp[..., None, None] * torch.sin(arg)).sum(dim=2) + 0.3 * torch.randn((K, C, H, W), generator=gen)
    return scenes / scenes.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()


def _save(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _load_code(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_waypoint_parity_gen_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_tokenizer(folder: Path) -> dict:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for token in _WORDS + _SYMBOLS:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True))
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 512,
        "padding_side": "right",
    })
    return vocab


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree_digest(root: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
