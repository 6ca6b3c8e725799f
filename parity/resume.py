"""Resuming an interrupted capture (`waypoint-parity run ... --resume`).

A killed run leaves every finished frame on disk and `complete: false` in its manifest (see
`parity.capture`). Resuming must give exactly the capture an uninterrupted run would have written,
so the state the next frame depends on (the KV cache contents, the global RNG of native noise,
anything else the model code keeps) is rebuilt the simplest way that is certainly right: the runner
runs the finished frames again, in order, and `ResumeWriter` checks that every replayed tensor is
bitwise what the capture holds (sha256, dtype, shape) instead of writing it. Only then are new
frames written. The price is recomputing the finished frames; the gain is that no runner keeps a
separate replay path that could drift from the real one.

Before anything runs the stored capture is verified (every tensor hash), and the run's header
(side, runner, options, case, seed, device, weights, model config) must equal the stored one.
Nothing on disk changes until every finished frame has been reproduced; then leftovers of the
killed frame (`.*.tmp`, a frame file renamed just before the kill) are removed and the run goes on.

    writer = open_writer(run_dir, header, resume=True)   # CaptureWriter when there is nothing to resume
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parity.capture import (FRAMES_DIR, Capture, CapturePolicy, CaptureWriter, FrameRecorder, StageKey, _json_default,
                            _to_cpu, manifest_value, tensor_info)
from parity.errors import UserError

RESUME_KEYS = ("side", "runner", "options", "case", "seed", "device", "model.weights_sha256", "model.transformer_config",
               "model.code", "model.snapshot")
"""Header fields that must be equal for a capture to be continued (dotted paths into the manifest)."""
CHECKED_FIELDS = ("protocol", "alignment")
"""Fields the runner sets after the header; on resume they are compared, not replaced."""


def open_writer(run_dir: str | Path, header: dict[str, Any], resume: bool = False, policy: CapturePolicy | None = None,
                background: bool = False) -> CaptureWriter:
    run_dir = Path(run_dir)
    if resume and run_dir.is_dir() and any(run_dir.iterdir()):
        return ResumeWriter(run_dir, header)  # keeps the stored capture policy; writes in the foreground
    return CaptureWriter(run_dir, header, policy, background)  # nothing to resume: a fresh capture


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def _first_difference(a: Any, b: Any, where: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}")
    return f"{where}: {_short(b)} now, {_short(a)} in the capture"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ResumeWriter(CaptureWriter):
    """A CaptureWriter over an existing incomplete capture: frames below `done` are verified, not written."""

    def __init__(self, run_dir: Path, header: dict[str, Any]):
        from parity.verify import verify_capture

        self.run_dir = Path(run_dir)
        cap = Capture.open(self.run_dir)
        if cap.complete:
            raise UserError("capture is already complete; nothing to resume", self.run_dir)
        verify_capture(cap)
        stored, now = cap.manifest, _normal(header)
        for key in RESUME_KEYS:
            a, b = manifest_value(stored, key), manifest_value(now, key)
            if a != b:
                raise UserError(f"cannot resume: {_first_difference(a, b, key)}; resume with the same inputs or start a new capture", self.run_dir)
        self.manifest = stored
        self.policy = CapturePolicy.from_manifest(stored)
        self.done = int(stored.get("frames_written", 0))
        self._replaying = True  # nothing on disk changes until every finished frame is reproduced
        self.manifest.pop("error", None)
        self.manifest.setdefault("resumed", []).append({"frames_before": self.done, "environment": now.get("environment")})

    def _replayed(self) -> None:
        if self._replaying:
            self._replaying = False
            self._remove_leftovers()
            self._write_manifest()

    def _write_manifest(self) -> None:
        if not self._replaying:
            super()._write_manifest()

    def close(self, complete: bool = True, **extra: Any) -> Path:
        self._replayed()
        return super().close(complete, **extra)

    def _remove_leftovers(self) -> None:
        frames = self.run_dir / FRAMES_DIR
        for tmp in [*self.run_dir.glob(".*.tmp"), *frames.glob(".*.tmp")]:
            tmp.unlink()
        for file in [*frames.glob("*.safetensors"), *frames.glob("*.json")]:
            if file.stem.isdigit() and int(file.stem) >= self.done:
                file.unlink()  # renamed into place, but the kill came before its manifest entry

    def set(self, key: str, value: Any) -> None:
        if key in CHECKED_FIELDS and key in self.manifest and self.manifest[key] != _normal(value):
            raise UserError(f"cannot resume: {_first_difference(self.manifest[key], _normal(value), key)}; "
                            "resume with the same inputs or start a new capture", self.run_dir)
        super().set(key, value)

    def record_prompt(self, embedding, pad_mask, native: tuple | None = None) -> None:
        tensors = [("prompt.embedding", embedding), ("prompt.pad_mask", pad_mask)]
        if native is not None:
            tensors += [("prompt.native_embedding", native[0]), ("prompt.native_pad_mask", native[1])]
        for name, t in tensors:
            self._expect(StageKey(None, None, name), _to_cpu(t), "the prompt")

    def frame(self, index: int, part: str | None = None) -> FrameRecorder:
        if index < self.done:
            return _ReplayRecorder(self, index, part)
        self._replayed()
        return FrameRecorder(self, index, part)

    def _expect(self, key: StageKey, t, what: str) -> None:
        info = self.manifest["tensors"].get(key.id)
        got = tensor_info(t, "")
        if info is None or (got.sha256, got.shape, got.dtype) != (info["sha256"], info["shape"], info["dtype"]):
            raise UserError(f"cannot resume: replaying {what} does not reproduce {key.id} bitwise (other device, library "
                            "version or thread count than the interrupted run?); start a new capture", self.run_dir)

    def _verify_frame(self, index: int, tensors: dict) -> None:
        stored = {StageKey.from_id(k).tensor_name for k in self.manifest["tensors"] if k.startswith(f"f{index}/")}
        if set(tensors) != stored:
            extra = sorted(set(tensors) ^ stored)[0]
            raise UserError(f"cannot resume: replaying frame {index} gives another set of stages than the capture "
                            f"(f{index}/{extra}); start a new capture", self.run_dir)
        for name, t in tensors.items():
            self._expect(StageKey.from_tensor_name(index, name), t, f"frame {index}")


class _ReplayRecorder(FrameRecorder):
    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.writer._verify_frame(self.index, self.tensors)
