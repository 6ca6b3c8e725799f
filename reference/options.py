"""Protocol options of the reference runner and the profiles that preset them.

A profile is only a named set of option values. Every value can be overridden by a case file
(`[sides.<name>.options]`) or on the command line (`--option key=value`), so any difference between
two profiles can be switched on alone (see the ablation of differences in the docs).

`upstream` is the ground truth: Overworld's own inference (world_engine / the snapshot's code).
`script` reproduces `official_waypoint.py` from FastVideo PR #1058, which the seed document called
"official" but which differs from upstream in the ways listed on each field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from parity.errors import UserError

DTYPES = ("bfloat16", "float16", "float32", "float64")


@dataclass(frozen=True, kw_only=True)
class ReferenceOptions:
    model_dtype: str = "bfloat16"
    """dtype the whole transformer is cast to; latents, controls and the step arithmetic use it too."""

    encoder_class: str = "umt5"
    """`umt5` (UMT5EncoderModel, upstream) or `t5` (T5EncoderModel on UMT5 weights, the script)."""

    encoder_dtype: str = "bfloat16"
    """dtype the text encoder runs in (upstream bf16, script fp32)."""

    mask_multiply: str = "bool"
    """How padded rows are zeroed: `bool` (hidden * mask in the encoder dtype, upstream) or
    `float` (hidden * mask.float() in fp32, then cast to the model dtype, the script)."""

    prompt_fix_text: bool = True
    """Apply `ftfy.fix_text` to the prompt before tokenising (upstream does)."""

    prompt_max_length: int = 512
    """Tokenizer padding length (`padding="max_length"`, truncation on)."""

    sigmas: str | tuple[float, ...] = "config"
    """`config` (checkpoint `scheduler_sigmas`), or an explicit descending list ending at 0."""

    sigmas_fallback: tuple[float, ...] = ()
    """Schedule used when `sigmas = "config"` and the checkpoint has none. Upstream has none (the
    default, empty): a checkpoint without `scheduler_sigmas` is an error, never a silent guess. The
    script profile keeps the script's hard-coded fallback (1, 0.9483, 0.838, 0)."""

    sigma_dtype: str = "bfloat16"
    """dtype the schedule is held in; upstream keeps it as a bf16 tensor, so 0.8609... becomes 0.859375."""

    noise_rule: str = "global"
    """Native noise draw: `global` (torch.manual_seed(seed) once, then the global RNG per frame,
    upstream) or `per_frame_generator` (Generator(device).manual_seed(seed + frame), the script)."""

    noise_dtype: str = "bfloat16"
    """dtype the noise is drawn in."""

    cache_mode: str = "ring"
    """`ring` (StaticKVCache from the snapshot's before_denoise.py, upstream) or `none` (no history:
    the script's import of StaticKVCache fails silently and every frame is generated alone)."""

    cache_pass: bool = True
    """After each frame, one more forward at sigma = 0 on the clean latent with the cache unfrozen,
    writing the frame's K/V. Meaningless without a cache."""

    vae_dtype: str = "bfloat16"
    """dtype the VAE is cast to (upstream bf16; FastVideo and the script keep fp32)."""

    decode_input_dtype: str = "model"
    """dtype of the latent handed to `vae.decode`: `model` (as produced, upstream) or a dtype name
    (the script calls `x.squeeze(1).float()`)."""

    latent_scale: float = 1.0
    """Decode input is `latent / latent_scale + latent_shift`; Waypoint uses neither (1 and 0)."""

    latent_shift: float = 0.0
    """See `latent_scale`."""

    sdpa_backend: str = "default"
    """Attention kernel for torch's scaled_dot_product_attention: `default` (torch picks), or one of
    `math`, `flash_attention`, `efficient_attention`, `cudnn_attention`. A harmless perturbation:
    calibration uses it to measure the noise floor of a side against itself."""

    compile_mode: str = "none"
    """`none` (eager, as upstream's reference loop) or a `torch.compile` mode (`default`,
    `reduce-overhead`, `max-autotune`) applied to the transformer for the run. Compilation time is
    reported apart (the first frame's time, in the manifest's `frame_times_s`)."""

    world_engine_setup: str = "none"
    """With `--code-source world_engine`: how much of `WorldEngine`'s own inference setup to apply.
    `none`: the plain `WorldModel` and `AutoEncoder`, eager. `patches`: what `WorldEngine` does to the
    modules after casting them: `apply_inference_patches` (bf16 lookup tables for the noise
    conditioning, merged QKV projection, split MLP fusion) and the VAE's weight norm baked in
    (`bake_weight_norm_`, as `InferenceAE.from_pretrained` does, before the cast). `inference`:
    `patches` plus its compile (`torch.compile(fullgraph=True, mode="max-autotune", dynamic=False)`, on each
    model call here, on the whole denoise / cache pass in `WorldEngine`) and its decode
    (`InferenceAE.decode`, compiled, under CUDA bf16 autocast). Needs bf16 model and sigmas."""

    strict_load: bool = True
    """Load transformer weights strictly (upstream). The script used strict=False, so missing or
    unexpected keys went unnoticed; with False they are still recorded in the manifest."""

    def __post_init__(self) -> None:
        choices = {
            "model_dtype": DTYPES,
            "encoder_dtype": DTYPES,
            "sigma_dtype": DTYPES,
            "noise_dtype": DTYPES,
            "vae_dtype": DTYPES,
            "encoder_class": ("umt5", "t5"),
            "mask_multiply": ("bool", "float"),
            "noise_rule": ("global", "per_frame_generator"),
            "cache_mode": ("ring", "none"),
            "decode_input_dtype": ("model",) + DTYPES,
            "sdpa_backend": ("default", "math", "flash_attention", "efficient_attention", "cudnn_attention"),
            "compile_mode": ("none", "default", "reduce-overhead", "max-autotune"),
            "world_engine_setup": ("none", "patches", "inference"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"option {name!r} is {value!r}; expected one of {', '.join(allowed)}")
        if self.prompt_max_length < 1:
            raise ValueError(f"option 'prompt_max_length' must be >= 1, got {self.prompt_max_length}")
        if self.latent_scale == 0:
            raise ValueError("option 'latent_scale' must not be 0")
        if self.world_engine_setup != "none" and (self.model_dtype, self.sigma_dtype) != ("bfloat16", "bfloat16"):
            raise ValueError(f"option 'world_engine_setup' = {self.world_engine_setup!r} needs model_dtype and sigma_dtype "
                             "bfloat16 (its lookup tables are keyed by bf16 sigmas)")
        if self.world_engine_setup == "inference" and self.compile_mode != "none":
            raise ValueError("option 'world_engine_setup' = 'inference' compiles the model as world_engine does; "
                             "leave 'compile_mode' at none")
        if self.sigmas != "config":
            check_schedule(tuple(self.sigmas), "option 'sigmas'")
        if self.sigmas_fallback:
            check_schedule(tuple(self.sigmas_fallback), "option 'sigmas_fallback'")

    def describe(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def check_schedule(sigmas: tuple[float, ...], what: str) -> None:
    """A schedule must have at least two values, be strictly descending, start in (0, 1] and end at 0."""
    if len(sigmas) < 2:
        raise ValueError(f"{what} needs at least two values, got {list(sigmas)}")
    if any(not isinstance(s, (int, float)) or s != s for s in sigmas):
        raise ValueError(f"{what} must hold numbers, got {list(sigmas)}")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"{what} must be strictly descending, got {list(sigmas)}")
    if sigmas[-1] != 0 or not 0 < sigmas[0] <= 1:
        raise ValueError(f"{what} must start in (0, 1] and end at 0, got {list(sigmas)}")


PROFILES: dict[str, dict[str, Any]] = {
    "upstream": {},
    "script": {
        "encoder_class": "t5",
        "encoder_dtype": "float32",
        "mask_multiply": "float",
        "prompt_fix_text": False,
        "noise_rule": "per_frame_generator",
        "cache_mode": "none",
        "cache_pass": False,
        "vae_dtype": "float32",
        "decode_input_dtype": "float32",
        "strict_load": False,
        "sigmas_fallback": (1.0, 0.9483, 0.8380, 0.0),
    },
}
"""Profile name -> the options it changes from the defaults (the defaults are upstream)."""

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(ReferenceOptions))


def resolve_options(profile: str, overrides: dict[str, Any] | None = None, source: str | None = None) -> ReferenceOptions:
    """Profile values, then `overrides` on top; every problem becomes a UserError naming `source`."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}", source)
    values = dict(PROFILES[profile])
    for key, value in (overrides or {}).items():
        if key not in OPTION_NAMES:
            raise UserError(f"unknown option {key!r}; known options: {', '.join(OPTION_NAMES)}", source)
        values[key] = _coerce(key, value, source)
    try:
        return ReferenceOptions(**values)
    except ValueError as exc:
        raise UserError(str(exc), source) from None


def _coerce(key: str, value: Any, source: str | None) -> Any:
    expected = {f.name: f for f in dataclasses.fields(ReferenceOptions)}[key]
    default = expected.default
    if key in ("sigmas", "sigmas_fallback"):
        if isinstance(value, str):
            if key == "sigmas" and value == "config":
                return value
            alternative = ' or "config"' if key == "sigmas" else ""
            raise UserError(f"option {key!r} must be a list of numbers{alternative}, got {value!r}", source)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"option {key!r} must be a list of numbers, got {value!r}", source)
        return tuple(float(v) for v in value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"option {key!r} must be true or false, got {value!r}", source)
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"option {key!r} must be a number, got {value!r}", source)
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"option {key!r} must be an integer, got {value!r}", source)
        return value
    if not isinstance(value, str):
        raise UserError(f"option {key!r} must be a string, got {value!r}", source)
    return value


def parse_cli_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as TOML so lists and booleans work."""
    import tomllib

    if "=" not in text:
        raise UserError(f"--option expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as bfloat16
    return key.strip(), value


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
