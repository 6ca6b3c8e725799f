"""Which generation of FastVideo's Waypoint port this is (detected, never configured).

- `stages` (PR #1058 head, 12c99dd42): `WaypointPipeline` composed of `prompt_encoding_stage`,
  `denoising_stage`, `decoding_stage`.
- `streaming` (640e654f3, 2e2375dc8): one pipeline with `streaming_reset(batch, args)` and
  `streaming_step(keyboard, mouse)`.
Anything else is a UserError naming what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.errors import UserError


@dataclass(frozen=True)
class Generation:
    name: str
    """`stages` (PR head) or `streaming` (640e654f3, 2e2375dc8)."""
    prompt_injection: str
    """`extra` (pre-filled batch.extra) or `context` (set on the streaming context after reset)."""


def detect_generation() -> Generation:
    """Which pipeline this FastVideo has; UserError for anything that is not a Waypoint port we drive."""
    try:
        from fastvideo.pipelines.basic.waypoint import waypoint_pipeline as wp
    except Exception as exc:
        raise UserError(f"this FastVideo has no Waypoint pipeline (fastvideo.pipelines.basic.waypoint: "
                        f"{type(exc).__name__}: {exc}); use FastVideo PR #1058") from None
    pipe = getattr(wp, "WaypointPipeline", None)
    if pipe is None:
        raise UserError("fastvideo.pipelines.basic.waypoint has no WaypointPipeline")
    try:
        from fastvideo.pipelines.stages import waypoint_stages as ws
    except Exception:
        ws = None
    if ws is not None and hasattr(ws, "WaypointDenoisingStage") and hasattr(ws, "WaypointDecodingStage"):
        return Generation("stages", "extra")
    if hasattr(pipe, "streaming_reset") and hasattr(pipe, "streaming_step"):
        injection = "extra" if ws is not None and hasattr(ws, "WaypointTextEncodingStage") else "context"
        return Generation("streaming", injection)
    raise UserError("WaypointPipeline has neither the stage pipeline (WaypointDenoisingStage) nor "
                    "streaming_reset/streaming_step; this FastVideo revision is not supported")

