"""Options of the FastVideo side (`RunRequest.options`, `--option key=value`).

- `precision`: the transformer's, "bf16" | "fp32" | "fp16" (default: the pipeline config's)
- `vae_precision`: the VAE's, same choices
- `sigmas`: an override of `pipeline_config.scheduler_sigmas` (recorded under `alignment.sigma_override`)
- `attention`: "auto" (SDPA on CPU, FastVideo's default elsewhere), "sdpa" or "native"
- `loader`: "auto" (FastVideo's own loader on CUDA for the PR head's stage pipeline, the direct build
  otherwise), "fastvideo" or "direct" (see `parity.fastvideo.loaders` and `parity.fastvideo.build`)
- `offload`: "example" (the `VideoGenerator` arguments of FastVideo's own Waypoint example: VAE on
  the GPU, DiT and text encoder offloaded as it asks), "defaults" (`VideoGenerator`'s bare defaults,
  whose CPU-resident VAE the Waypoint decoding stage does not move: decoding fails) or "off"
  (everything on the GPU); only FastVideo's loader reads it
- `compile`: "off" (default, as FastVideo's example runs) or "on" (`enable_torch_compile=True`: FastVideo's
  `post_init` wraps the transformer in `torch.compile`); FastVideo's loader only
"""

from __future__ import annotations

from typing import Any

from parity.errors import UserError

OPTION_KEYS = ("precision", "vae_precision", "sigmas", "attention", "loader", "offload", "compile")
PRECISIONS = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def parse_options(raw: dict[str, Any], source) -> dict[str, Any]:
    from reference.options import check_schedule

    out: dict[str, Any] = {"precision": None, "vae_precision": None, "sigmas": None, "attention": "auto", "loader": "auto",
                           "offload": "example", "compile": "off"}
    for key, value in raw.items():
        if key not in OPTION_KEYS:
            raise UserError(f"unknown FastVideo option {key!r}; known: {', '.join(OPTION_KEYS)}", source)
        if key in ("precision", "vae_precision"):
            if value not in PRECISIONS:
                raise UserError(f"option {key!r} must be one of {', '.join(PRECISIONS)}, got {value!r}", source)
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
        elif key == "loader" and value not in ("auto", "fastvideo", "direct"):
            raise UserError(f"option 'loader' must be auto, fastvideo or direct, got {value!r}", source)
        elif key == "offload" and value not in ("example", "defaults", "off"):
            raise UserError(f"option 'offload' must be example, defaults or off, got {value!r}", source)
        elif key == "compile" and value not in ("off", "on"):
            raise UserError(f"option 'compile' must be off or on, got {value!r}", source)
        out[key] = value
    return out

