"""Model, KV cache and VAE code taken from Overworld's `world_engine` library instead of a snapshot's files.

    we = import_world_engine()            # installed `world_engine`, or the tree named by WORLD_ENGINE_SRC
    parts = load_parts(snapshot, options, device)

`world_engine` is never vendored here: it is imported at run time. WORLD_ENGINE_SRC may name the
repository root (its package directory is `src/`), the package directory itself (the one holding
`__init__.py` and `model/`), or a folder that contains a `world_engine/` package.

What comes from where (recorded in the manifest under `model.code`):
- transformer: `world_engine.model.WorldModel(config)`, config = the snapshot's `transformer/config.json`
  as an OmegaConf object (what `WorldModel.load_config` builds from `config.yaml`), weights loaded
  strictly from `transformer/*.safetensors`, then `.to(device, dtype).eval()` as `WorldEngine` does.
  By default this is the plain model, eager. Option `world_engine_setup` applies what `WorldEngine`
  does on top: `patches` = `apply_inference_patches` after the cast (bf16 lookup tables for the noise
  conditioning, merged QKV, split MLP fusion; they accept only the checkpoint's own bf16 sigmas) and
  the VAE's weight norm baked; `inference` = `patches` + its compile and its compiled decode.
- KV cache: `world_engine.model.StaticKVCache(config, batch_size, dtype)`.
- VAE: `world_engine.ae_nn.AutoEncoder(encoder_config, decoder_config)` with weights from
  `vae/*.safetensors` (strict), decoded by `InferenceAE.decode`'s body without its `torch.compile`
  and CUDA autocast wrappers (so it runs on CPU and in the VAE dtype the options ask for).
Importing world_engine sets float32 matmul precision to "medium"; `parity.environment.pin_numerics`
is called again right after the import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from parity.environment import source_commit
from parity.errors import UserError

SRC_ENV = "WORLD_ENGINE_SRC"

VAE_KEYS = {
    # world_engine AutoEncoder key: accepted spellings in vae/config.json (first wins)
    "channels": ("channels",),
    "latent_channels": ("latent_channels",),
    "ch_0": ("ch_0", "decoder_ch_0"),
    "ch_max": ("ch_max", "decoder_ch_max"),
    "encoder_blocks_per_stage": ("encoder_blocks_per_stage",),
    "decoder_blocks_per_stage": ("decoder_blocks_per_stage",),
    "skip_logvar": ("skip_logvar",),
}
ENCODER_VAE_KEYS = {"ch_0": ("encoder_ch_0", "ch_0"), "ch_max": ("encoder_ch_max", "ch_max")}


def _package_dir(src: Path) -> Path | None:
    for cand in (src, src / "src", src / "world_engine"):
        if (cand / "__init__.py").is_file() and (cand / "model" / "__init__.py").is_file() and (cand / "ae_nn.py").is_file():
            return cand
    return None


def world_engine_status() -> tuple[bool, str]:
    """(usable, where or why not), without importing world_engine's heavy modules."""
    src = os.environ.get(SRC_ENV)
    if src:
        pkg = _package_dir(Path(src).expanduser())
        if pkg is None:
            return False, f"{SRC_ENV}={src} is not a world_engine checkout (no __init__.py, model/ and ae_nn.py there or under src/)"
        return True, str(pkg)
    if "world_engine" in sys.modules or importlib.util.find_spec("world_engine") is not None:
        return True, "installed world_engine"
    return False, f"world_engine is not importable (install it, or set {SRC_ENV} to a checkout of Overworldai/world_engine)"


def import_world_engine():
    """The `world_engine` package (imported once per process)."""
    if "world_engine" in sys.modules:
        return sys.modules["world_engine"]
    ok, where = world_engine_status()
    if not ok:
        raise UserError(where)
    src = os.environ.get(SRC_ENV)
    try:
        if src:
            pkg = _package_dir(Path(src).expanduser())
            spec = importlib.util.spec_from_file_location("world_engine", pkg / "__init__.py",
                                                          submodule_search_locations=[str(pkg)])
            module = importlib.util.module_from_spec(spec)
            sys.modules["world_engine"] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop("world_engine", None)
                raise
        else:
            module = importlib.import_module("world_engine")
    except ImportError as exc:
        raise UserError(f"world_engine failed to import ({type(exc).__name__}: {exc}); it needs einops, tensordict, "
                        "rotary-embedding-torch and omegaconf") from None
    return module


def world_engine_revision() -> dict[str, Any]:
    """Where world_engine came from and, when it is a git checkout, its commit."""
    module = sys.modules.get("world_engine")
    path = Path(module.__file__).parent if module is not None and getattr(module, "__file__", None) else None
    info: dict[str, Any] = {"path": str(path) if path else None}
    if path is not None:
        commit = source_commit(tree_roots(path), "WORLD_ENGINE_COMMIT")
        if commit:
            info["commit"] = commit
    try:
        from importlib import metadata

        info["version"] = metadata.version("world_engine")
    except Exception:
        pass
    return info


def tree_roots(package: Path) -> list[Path]:
    """Where a world_engine checkout's root can be, seen from its package folder: the package folder
    itself, the folder holding it, and, for the `src/` layout, the folder above `src/`."""
    package = package.resolve()
    roots = [package, package.parent]
    if package.name == "src" or package.parent.name == "src":
        roots.append(package.parent.parent if package.parent.name == "src" else package.parent)
    return list(dict.fromkeys(roots))


def model_config(config: dict[str, Any]):
    """The snapshot's transformer config as world_engine expects it (attribute access, OmegaConf)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({k: v for k, v in config.items() if not k.startswith("_")})


def latent_shape(config: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(1, 1, C, height * patch_h, width * patch_w): world_engine's `frm_shape` (config height/width
    count tokens, not latent pixels)."""
    ph, pw = config.get("patch", [1, 1])
    return (1, 1, int(config["channels"]), int(config["height"]) * int(ph), int(config["width"]) * int(pw))


def vae_configs(vae_config: dict[str, Any], where: Path):
    """(encoder_config, decoder_config) for `AutoEncoder`, from world_engine or FastVideo key spellings."""
    from omegaconf import OmegaConf

    def pick(names, key):
        for n in names:
            if n in vae_config:
                return vae_config[n]
        raise UserError(f"vae config lacks {key!r} (looked for {', '.join(names)})", where)

    dec = {k: pick(names, k) for k, names in VAE_KEYS.items() if k != "skip_logvar"}
    dec["skip_logvar"] = bool(vae_config.get("skip_logvar", False))
    enc = dict(dec, **{k: pick(names, k) for k, names in ENCODER_VAE_KEYS.items()})
    for cfg in (enc, dec):
        for k in ("encoder_blocks_per_stage", "decoder_blocks_per_stage"):
            cfg[k] = list(cfg[k])
    return OmegaConf.create(enc), OmegaConf.create(dec)


class WorldEngineDecoder:
    """`vae.decode(latent (1, C, h, w)) -> uint8 (H, W, 3)` with world_engine's decoder and output rule."""

    def __init__(self, autoencoder, decode_fn: Callable | None):
        self.ae_model = autoencoder
        self._decode_fn = decode_fn

    def to(self, device=None, dtype=None):
        self.ae_model = self.ae_model.to(device=device, dtype=dtype)
        return self

    def eval(self):
        self.ae_model.eval()
        return self

    def parameters(self):
        return self.ae_model.parameters()

    def decode(self, latent):
        import torch

        latent = latent.to(next(self.ae_model.parameters()).dtype)
        with torch.no_grad():
            if self._decode_fn is not None:
                return self._decode_fn(self, latent)
            decoded = self.ae_model.decoder(latent)
            decoded = (decoded / 2 + 0.5).clamp(0, 1)
            decoded = (decoded * 255).round().to(torch.uint8)
            return decoded.squeeze(0).permute(1, 2, 0)[..., :3]


def _uncompiled_decode() -> Callable | None:
    """`InferenceAE.decode` with its inference_mode / torch.compile / autocast wrappers peeled off, so the
    code that runs is world_engine's own. None when the wrappers cannot be peeled (fallback: the same
    four lines, written in `WorldEngineDecoder.decode`)."""
    import warnings

    from world_engine.ae import InferenceAE

    fn = InferenceAE.__dict__.get("decode")
    for _ in range(6):
        inner = getattr(fn, "_torchdynamo_orig_callable", None) or getattr(fn, "__wrapped__", None)
        if inner is None:
            break
        fn = inner
    if fn is None or getattr(fn, "__name__", "") != "decode":
        return None

    def call(self, latent):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cuda autocast decorator warns on CPU and does nothing there
            return fn(self, latent)

    return call


class NoKVCache:
    """The official script's stand-in when it finds no `StaticKVCache` (`cache_mode = none`): nothing
    is stored, each attention sees only the current frame's K/V, unmasked."""

    def set_frozen(self, frozen: bool) -> None:
        pass

    def upsert(self, k, v, pos_ids, layer_idx):
        return k, v, None


def _world_engine_decode() -> Callable:
    """`InferenceAE.decode` as world_engine ships it: inference mode, `torch.compile(max-autotune)`, CUDA
    bf16 autocast."""
    from world_engine.ae import InferenceAE

    return InferenceAE.decode


def setup_summary(code_source: str, options, attention_note: str = "") -> dict[str, Any]:
    """The reference side's inference setup as the config diff shows it (`setup.summary`)."""
    if code_source != "world_engine":
        compiled = options.compile_mode != "none"
        return {"summary": f"snapshot code; compile {options.compile_mode}; attention torch SDPA ({options.sdpa_backend})",
                "loader": "harness: the snapshot's classes, strict load", "patches": "none",
                "compile": options.compile_mode if compiled else "none", "attention": f"torch SDPA ({options.sdpa_backend})"}
    setup = options.world_engine_setup
    if setup == "inference":
        compile_ = "torch.compile(fullgraph=True, mode=max-autotune, dynamic=False) per model call"
    else:
        compile_ = options.compile_mode
    attention = "world_engine flex_attention " + ("(compiled)" if compile_ != "none" else "(eager)")
    patches = "apply_inference_patches + baked VAE weight norm" if setup != "none" else "none"
    return {"summary": f"world_engine setup {setup}: patches {patches}; compile {compile_}; attention {attention}",
            "loader": "harness: world_engine WorldModel(config), strict load", "patches": patches, "compile": compile_,
            "attention": attention}


@dataclass
class WorldEngineParts:
    model: Any
    vae: Any
    cache_factory: Callable
    latent_shape: tuple[int, ...]
    code: dict[str, Any]
    no_cache: Any = None


def load_parts(snapshot: Path, config: dict[str, Any], options, device: str, load_weights, read_json):
    """(WorldEngineParts, transformer LoadReport): transformer, cache factory and VAE from world_engine."""
    import torch

    from parity.environment import pin_numerics

    we = import_world_engine()
    pin_numerics(device)  # world_engine's import set float32 matmul precision to "medium"
    from world_engine.ae_nn import AutoEncoder
    from world_engine.model import StaticKVCache, WorldModel

    cfg = model_config(config)
    try:
        # Built on its device, as WorldEngine does: NoCastModule parts (the noise conditioner's fp32
        # `freq` buffer) are not moved by a later `.to(device)`.
        with torch.device(device):
            model = WorldModel(cfg)
    except Exception as exc:
        raise UserError(f"world_engine WorldModel(config) failed ({type(exc).__name__}: {exc})",
                        snapshot / "transformer" / "config.json") from None
    report = load_weights(model, snapshot / "transformer", options.strict_load, "transformer")
    model = model.to(device=device, dtype=getattr(torch, options.model_dtype)).eval()
    setup = options.world_engine_setup
    if setup != "none":
        from world_engine.patch_model import apply_inference_patches

        apply_inference_patches(model)  # after the cast, as WorldEngine.__init__ calls it

    vae_path = snapshot / "vae" / "config.json"
    enc_cfg, dec_cfg = vae_configs(read_json(vae_path), vae_path)
    with torch.device(device):
        ae = AutoEncoder(enc_cfg, dec_cfg)
    load_weights(ae, snapshot / "vae", True, "VAE")
    if setup != "none":
        from world_engine.ae import bake_weight_norm_

        bake_weight_norm_(ae)  # InferenceAE.from_pretrained, before the cast to the VAE dtype
    decode_fn = _world_engine_decode() if setup == "inference" else _uncompiled_decode()
    vae = WorldEngineDecoder(ae, decode_fn).to(device=device, dtype=getattr(torch, options.vae_dtype)).eval()

    def cache_factory(_config, batch_size, dtype):
        return StaticKVCache(cfg, batch_size=batch_size, dtype=dtype).to(device)

    code = {
        "source": "world_engine",
        "world_engine": world_engine_revision(),
        "transformer": "world_engine.model.WorldModel" + (
            " + apply_inference_patches (bf16 noise-conditioning lookup tables, merged QKV, split MLP fusion)"
            if setup != "none" else " (no apply_inference_patches)"),
        "kv_cache": "world_engine.model.StaticKVCache",
        "vae": "world_engine.ae_nn.AutoEncoder" + (", weight norm baked" if setup != "none" else "") + ", decode = InferenceAE.decode " + (
            "as world_engine runs it (compiled max-autotune, CUDA bf16 autocast)" if setup == "inference" else
            "body (compile/autocast wrappers removed)" if decode_fn else "rule re-stated (wrappers could not be removed)"),
        "setup": setup,
    }
    del we
    return WorldEngineParts(model, vae, cache_factory, latent_shape(config), code, NoKVCache()), report
