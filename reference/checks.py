"""Checks that turn a misfit snapshot into one clear line instead of a traceback deep in its code.

Before the run (nothing written yet):
- `check_config`     the transformer config's latent shape, patching and control width fit the
                     protocol the harness drives (latent (1, 1, C, H, W), 256 buttons)
- `check_sigmas`     `scheduler_sigmas` is a list of numbers forming a valid schedule
During the run (finished frames stay on disk, the capture stays incomplete):
- `call_model`       a model call that raises is reported with its frame, step and stage
- `check_output`     a velocity of the wrong shape, or with NaN/Inf, is reported with its frame,
                     step, stage and the first bad element in the stage's own axes
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from parity.case import N_BUTTONS
from parity.errors import UserError
from reference.options import check_schedule

LATENT_AXES = ("batch", "frame", "channel", "y", "x")


def check_config(config: dict[str, Any], path: Path) -> None:
    """Latent (C, H, W) positive integers, (H, W) divisible by `patch`, `n_buttons` = 256."""
    for key in ("channels", "height", "width"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{key} must be a positive integer (the latent shape is (1, 1, channels, height, width)), got {value!r}", path)
    patch = config.get("patch", [1, 1])
    if not (isinstance(patch, list) and len(patch) == 2 and all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch)):
        raise UserError(f"patch must be [ph, pw], two positive integers, got {patch!r}", path)
    if config["height"] % patch[0] or config["width"] % patch[1]:
        raise UserError(f"latent height x width {config['height']} x {config['width']} is not divisible by patch {patch}", path)
    buttons = config.get("n_buttons", N_BUTTONS)
    if buttons != N_BUTTONS:
        raise UserError(f"n_buttons is {buttons!r}, but the control protocol sends {N_BUTTONS} button values per frame", path)


def check_sigmas(values: Any, path: Path) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"scheduler_sigmas must be a list of numbers, got {values!r}", path)
    try:
        check_schedule(tuple(values), "scheduler_sigmas")
    except ValueError as exc:
        raise UserError(str(exc), path) from None
    return [float(v) for v in values]


def call_model(fn: Callable, where: str, path: Path, *args, **kwargs):
    """`fn(*args, **kwargs)`; an exception from the snapshot's code becomes one line naming `where`."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # the model is the snapshot's code: whatever it raises is about the snapshot
        raise UserError(f"{where}: the model raised {type(exc).__name__}: {exc}", path) from None


def check_output(t, expected_shape, where: str, path: Path, frames_kept: int) -> None:
    """Shape equal to `expected_shape` and every element finite; `where` is `frame 2, step 1,
    step.velocity`. The message says how many finished frames the capture keeps."""
    import torch

    kept = _kept(frames_kept)
    if tuple(t.shape) != tuple(expected_shape):
        raise UserError(f"{where}: the model returned shape {list(t.shape)}, expected {list(expected_shape)} (the latent's); {kept}", path)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        value = float(t[tuple(bad)].float())
        names = LATENT_AXES if len(bad) == len(LATENT_AXES) else ()
        at = ", ".join(f"{n} {i}" for n, i in zip(names, bad) if n not in ("batch", "frame")) if names else str(bad)
        count = int((~finite).sum())
        raise UserError(f"{where}: the model produced {count} NaN/Inf value{'s' if count != 1 else ''}, first at {at} ({value}); {kept}", path)


def _kept(frames: int) -> str:
    if frames == 0:
        return "no frame was finished, the capture is marked incomplete"
    span = "frame 0" if frames == 1 else f"frames 0-{frames - 1}"
    return f"{span} are kept, the capture is marked incomplete" if frames > 1 else f"{span} is kept, the capture is marked incomplete"
