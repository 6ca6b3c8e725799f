"""Capture size estimate and limits, checked before a run writes anything.

    est = estimate_capture(latent_shape=(1, 1, 16, 32, 32), frames=8, steps=4, model_dtype="bfloat16",
                           sigma_dtype="bfloat16", cache_pass=True, prompt_shape=(1, 512, 32),
                           decoded_shape=(180, 320, 3))
    print(check_budget(est, out_dir, budget_limits(cli_value, case)))   # one line; UserError when over

What one frame stores (see `parity.capture`): controls (2 + 256 + 1 values, model dtype), noise,
`3 x steps` latents (input, velocity, update) plus `steps` scalar sigmas, the final latent,
2 latents for the cache pass when there is one, and the decoded uint8 frame. Each tensor also costs
its safetensors header entry and its manifest entry (`PER_TENSOR_OVERHEAD`, measured on the tiny
model: the estimate is within a few percent of the real folder there).

Limits: `--max-capture-bytes`, the case's `max_capture_bytes` and `$WAYPOINT_PARITY_MAX_CAPTURE_BYTES`
each cap the capture; the smallest one given applies. Independently, the estimate must fit the free
space of the disk holding the run folder minus `DISK_MARGIN` (what is already in the folder, when a
run is resumed, counts as written).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import UserError

BUDGET_ENV = "WAYPOINT_PARITY_MAX_CAPTURE_BYTES"
DISK_MARGIN = 100 * 1024**2
"""Free space left untouched on the disk: other writers (logs, the manifest rewrites) need some too."""
PER_TENSOR_OVERHEAD = 600
"""Bytes per tensor beyond its data: ~120 in the safetensors header, ~480 in manifest.json."""
N_CONTROL_VALUES = 2 + 256 + 1

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: Any, what: str) -> int:
    """A byte count: an integer, or a string such as `500MB`, `2GiB`, `1.5G` (decimal K/M/G/T)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)) and m.group(2).lower() in _UNITS:
        number, unit = float(m.group(1)), m.group(2).lower()
    else:
        raise ValueError(f"{what} must be a byte count such as 2000000000, 500MB or 2GiB, got {value!r}")
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return result


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass(frozen=True)
class Estimate:
    bytes: int
    frames: int
    steps: int
    per_frame: int

    def describe(self) -> str:
        return f"{human(self.bytes)} for {self.frames} frames x {self.steps} steps ({human(self.per_frame)} per frame)"


def _itemsize(dtype: str) -> int:
    import torch

    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def estimate_capture(*, latent_shape, frames: int, steps: int, model_dtype: str, sigma_dtype: str, cache_pass: bool,
                     prompt_shape, decoded_shape, kv_bytes: int = 0) -> Estimate:
    """`kv_bytes`: the KV stages of one frame at most (`parity.kv_view.kv_capture_bytes`)."""
    item = _itemsize(model_dtype)
    latent = math.prod(latent_shape) * item
    latents = 2 + 3 * steps + 1 + (2 if cache_pass else 0)   # native and used noise, steps, final latent, cache pass
    tensors = 3 + latents + 2 * steps + 1 + (2 if cache_pass else 0)  # + controls, sigmas, timestamps, decoded
    per_frame = (N_CONTROL_VALUES * item + latents * latent + steps * (_itemsize(sigma_dtype) + 8)
                 + math.prod(decoded_shape) + tensors * PER_TENSOR_OVERHEAD + (kv_bytes if cache_pass else 0))
    prompt = 2 * (math.prod(prompt_shape) * item + math.prod(prompt_shape[:2]) + 2 * PER_TENSOR_OVERHEAD)  # used + native
    manifest_base = 20_000  # header: options, case (per-frame controls), environment, weight hashes
    total = prompt + manifest_base + frames * per_frame
    return Estimate(int(total), frames, steps, int(per_frame))


def decoded_shape(snapshot: Path, latent_shape) -> tuple[int, int, int]:
    """(H', W', 3) from `vae/config.json` `sample_size` when given, else 8x the latent (Waypoint's VAE)."""
    import json

    try:
        size = json.loads((snapshot / "vae" / "config.json").read_text()).get("sample_size")
    except (OSError, ValueError, AttributeError):
        size = None
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return (size[0], size[1], 3)
    return (latent_shape[-2] * 8, latent_shape[-1] * 8, 3)


def budget_limits(cli_value: Any = None, case_value: Any = None, env: dict | None = None) -> list[tuple[int, str]]:
    """Every limit given, as (bytes, where it came from)."""
    env = os.environ if env is None else env
    limits = []
    for value, source in ((cli_value, "--max-capture-bytes"), (case_value, "the case's max_capture_bytes"),
                          (env.get(BUDGET_ENV) or None, f"${BUDGET_ENV}")):
        if value is None:
            continue
        try:
            limits.append((parse_bytes(value, source), source))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return limits


def _folder_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_budget(estimate: Estimate, out_dir: Path, limits: list[tuple[int, str]]) -> str:
    """The line to print before the run; a UserError (naming `out_dir`) when a limit or the disk is too small."""
    out_dir = Path(out_dir)
    what = f"the capture needs about {estimate.describe()}"
    if limits:
        allowed, source = min(limits)
        if estimate.bytes > allowed:
            raise UserError(f"{what}, more than the {human(allowed)} allowed by {source}; raise the limit or run fewer frames", out_dir)
    written = _folder_bytes(out_dir)
    disk = _existing_parent(out_dir)
    free = shutil.disk_usage(disk).free
    needed = max(0, estimate.bytes - written)
    if needed > free - DISK_MARGIN:
        raise UserError(f"{what}, but {disk} has {human(free)} free and {human(DISK_MARGIN)} of it is kept as a margin; "
                        "free some space or choose another --out", out_dir)
    budget = f"limit {human(min(limits)[0])} from {min(limits)[1]}" if limits else "no size limit"
    return f"capture estimate: {estimate.describe()}; {budget}; {human(free)} free on {disk}"
