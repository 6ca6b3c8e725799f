"""Teacher forcing: local error per stage, beside the cumulative error of the free run.

In a free run, side B's error at frame 5 step 2 mixes what B's model does wrong there with
everything it got wrong before. Teacher-forced, B's model is fed A's exact inputs at every step
(A's noise, A's step input and sigmas, A's final latent for the cache pass and the decode), so
its cache is built from A's trajectory and each stage's error is that stage's alone (local).

    local = compare(A, B teacher-forced by A)     free = compare(A, B)
    growth = error_growth(local, free)            # per frame: local vs cumulative, and a verdict

Growth verdicts (on the final latent's rel_l2 per frame, from the first divergent frame on):
- "none": neither run diverges.
- "bounded": the free run's error never exceeds `BOUND` x the largest local error: what goes
  wrong does not propagate.
- "compounds across frames": the free error grows by more than `BOUND` x from its first nonzero
  frame to the mean of the last quarter of frames: each frame inherits and adds to the last.
- "grows within frames, bounded across frames": otherwise (the free error exceeds the local error,
  but settles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parity.capture import Capture, StageKey
from parity.compare import ComparisonResult
from parity.errors import UserError

BOUND = 2.0


@dataclass
class TeacherInputs:
    """The inputs of a reference capture, handed to a teacher-forced run."""

    capture: Capture
    steps: int

    @classmethod
    def open(cls, run_dir: Path, frames: int) -> "TeacherInputs":
        cap = Capture.open(run_dir)
        written = int(cap.manifest.get("frames_written", 0))
        if written < frames:
            raise UserError(f"teacher capture has {written} frames, the case needs {frames}", run_dir)
        steps = int(cap.protocol.get("steps", 0))
        if steps < 1:
            raise UserError("teacher capture records no denoise steps (protocol.steps)", run_dir)
        return cls(cap, steps)

    def _get(self, key: StageKey, device, dtype):
        return self.capture.tensor(key).to(device=device, dtype=dtype)

    def noise(self, f, device, dtype):
        return self._get(StageKey(f, None, "noise"), device, dtype)

    def step_input(self, f, i, device, dtype):
        return self._get(StageKey(f, i, "step.input"), device, dtype)

    def latent(self, f, device, dtype):
        return self._get(StageKey(f, None, "latent"), device, dtype)

    def sigmas(self, f, device, dtype):
        """The teacher's schedule as it used it: its step sigmas, then 0."""
        import torch

        values = [self._get(StageKey(f, i, "step.sigma"), device, dtype).reshape(()) for i in range(self.steps)]
        return torch.stack(values + [torch.zeros((), device=device, dtype=dtype)])


@dataclass
class FrameGrowth:
    frame: int
    local: float
    """Largest rel_l2 of this frame's step updates and final latent, teacher-forced."""
    cumulative: float
    """rel_l2 of this frame's final latent in the free run."""

    @property
    def amplification(self) -> float:
        if self.local == 0:
            return 0.0 if self.cumulative == 0 else float("inf")
        return self.cumulative / self.local


@dataclass
class GrowthReport:
    verdict: str
    frames: list[FrameGrowth] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    """Per (frame, step): local and cumulative rel_l2 of velocity and update."""

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "bound": BOUND,
            "frames": [{"frame": g.frame, "local": g.local, "cumulative": g.cumulative, "amplification": g.amplification} for g in self.frames],
            "steps": self.steps,
        }


def error_growth(local: ComparisonResult, free: ComparisonResult) -> GrowthReport:
    def rel(result: ComparisonResult) -> dict[StageKey, float]:
        return {s.key: s.metrics.rel_l2 for s in result.stages if s.metrics is not None}

    loc, cum = rel(local), rel(free)
    frames = sorted({k.frame for k in loc if k.frame is not None})
    growth = []
    for f in frames:
        own = [v for k, v in loc.items() if k.frame == f and k.family in ("step.update", "latent")]
        growth.append(FrameGrowth(f, max(own, default=0.0), cum.get(StageKey(f, None, "latent"), float("nan"))))
    steps = [
        {"frame": k.frame, "step": k.step, "family": k.family, "local": v, "cumulative": cum.get(k)}
        for k, v in sorted(loc.items(), key=lambda kv: kv[0].order) if k.step is not None and k.family in ("step.velocity", "step.update")
    ]
    return GrowthReport(_verdict(growth), growth, steps)


def _verdict(growth: list[FrameGrowth]) -> str:
    cum = [g.cumulative for g in growth]
    peak_local = max((g.local for g in growth), default=0.0)
    if not any(c > 0 for c in cum) and peak_local == 0:
        return "none"
    if max(cum) <= BOUND * peak_local:
        return "bounded"
    first = next(i for i, c in enumerate(cum) if c > 0)
    tail = cum[max(first + 1, len(cum) - max(1, len(cum) // 4)):] or cum[-1:]
    if sum(tail) / len(tail) > BOUND * cum[first]:
        return "compounds across frames"
    return "grows within frames, bounded across frames"
