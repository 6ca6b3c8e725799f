"""The contract every runner implements, and the request it receives.

A runner turns one `RunRequest` into one capture folder (see `parity.capture`). The reference
runner (`reference.runner.ReferenceRunner`) and the FastVideo adapter implement the same method,
so the comparison never needs to know which side produced a capture.

    runner = ReferenceRunner(snapshot, profile="upstream")
    capture_dir = runner.run(RunRequest(case, side="upstream", out_dir=..., device="cpu"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from parity.case import Case


@dataclass(frozen=True)
class RunRequest:
    case: Case
    side: str
    """Name of this side in the comparison (`upstream`, `script`, `fastvideo`)."""
    out_dir: Path
    """The capture folder to create; it must not exist or be empty."""
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    """Option overrides on top of the profile and the case's `[options]`."""
    prompt_from: Path | None = None
    """A capture whose prompt embedding and pad mask this side uses instead of encoding (shared prompt)."""
    capture: str = "full"
    """What to capture: `full`, `every:K` (per-step tensors on every K-th frame), or `none` (bare
    run, for benchmarks). See `parity.capture.CapturePolicy`."""
    teacher: Path | None = None
    """Teacher forcing: a capture whose exact inputs this side's model is fed at every step and
    cache pass (noise, step inputs and sigmas, final latent), so each stage shows only its local
    error. See `parity.diagnose.teacher`."""
    resume: bool = False
    """Continue the incomplete capture in `out_dir` (see `parity.resume`); a fresh one if there is none."""
    max_capture_bytes: int | str | None = None
    """Size limit of the capture (`--max-capture-bytes`; see `parity.budget`)."""
    purpose: dict[str, Any] | None = None
    """Why this run exists, when it is not a side of its own: recorded as the manifest's `purpose`
    (the fp32 oracle of another capture says so here; see `parity.oracle`)."""


class Runner(Protocol):
    name: str

    def run(self, request: RunRequest) -> Path:
        """Run the case, write the capture, return its folder."""
        ...
