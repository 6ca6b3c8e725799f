"""Case files: what to run (prompt, seed, frames, controls) and how to judge it (tolerances).

A case is a TOML file in `cases/`:

    name = "seed-official"                 # defaults to the file name
    description = "The seed document's own run"
    prompt = "A first-person gameplay video exploring a stylized world."
    seed = 42
    frames = 8
    max_capture_bytes = "2GB"              # optional size limit of each capture (see parity.budget)

    [controls]                             # held on every frame unless a segment overrides it
    buttons = [17]                         # key ids pressed (0..255); 17 is W
    mouse = [0.0, 0.0]                     # raw mouse velocity (dx, dy)
    scroll = 0                             # wheel value; the model sees its sign

    [[controls.segments]]                  # frames [start, end) override the fields they set
    frames = [4, 8]
    mouse = [0.25, 0.0]

    [alignment]                            # see parity.alignment
    noise = "shared"                       # or "native"
    prompt = "shared"                      # or "native"

    [options]                              # reference options applied to every reference side
    model_dtype = "bfloat16"

    [[pairs]]                              # optional; default: upstream vs script (+ fastvideo)
    a = "upstream"
    b = "script"
    b_options = { sigmas = [1.0, 0.949, 0.84, 0.0] }

    [tolerances]                           # per stage family or stage name; see parity.tolerances
    "step.velocity" = { rel_l2 = 0.02 }

Every problem is reported as `file: key: reason` and exit code 2.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import UserError
from parity.tolerances import Tolerances, parse_tolerances

N_BUTTONS = 256
SIDES = ("upstream", "script", "fastvideo")
"""Side names a pair may use: the two reference profiles, and FastVideo's pipeline."""


@dataclass(frozen=True)
class FrameControls:
    """The inputs of one frame, before they become tensors (`mouse (1,1,2)`, `button (1,1,256)`,
    `scroll (1,1,1)` in the model dtype)."""

    buttons: tuple[int, ...] = ()
    mouse: tuple[float, float] = (0.0, 0.0)
    scroll: float = 0.0

    def tensors(self, dtype, device="cpu"):
        import torch

        mouse = torch.tensor(self.mouse, dtype=torch.float32).reshape(1, 1, 2)
        button = torch.zeros(1, 1, N_BUTTONS, dtype=torch.float32)
        for key in self.buttons:
            button[0, 0, key] = 1.0
        # Upstream feeds the sign of the wheel value, not its magnitude.
        scroll = torch.tensor([[[math.copysign(1.0, self.scroll) if self.scroll else 0.0]]])
        return {name: t.to(device=device, dtype=dtype) for name, t in (("mouse", mouse), ("button", button), ("scroll", scroll))}


@dataclass(frozen=True)
class Pair:
    """Two sides to compare; `a` is the reference the verdicts are measured against."""

    a: str
    b: str
    a_options: dict[str, Any] = field(default_factory=dict)
    b_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.a}-vs-{self.b}"


@dataclass(frozen=True)
class Alignment:
    """Which inputs both sides share. `shared` noise: the harness draws every noise tensor once at
    its exact shape and both sides use it. `shared` prompt: side A's embedding is injected into B."""

    noise: str = "shared"
    prompt: str = "shared"


@dataclass(frozen=True)
class Case:
    name: str
    prompt: str
    seed: int
    frames: int
    controls: tuple[FrameControls, ...]
    """One entry per frame, segments already applied."""
    alignment: Alignment = Alignment()
    options: dict[str, Any] = field(default_factory=dict)
    pairs: tuple[Pair, ...] = ()
    """Empty means the default pairs (see `parity.suite.default_pairs`)."""
    tolerances: Tolerances = field(default_factory=Tolerances)
    description: str = ""
    path: Path | None = None
    max_capture_bytes: int | None = None
    """Size limit of each capture of this case, in bytes (see `parity.budget`)."""

    def describe(self) -> dict[str, Any]:
        """The case as it goes into a manifest: resolved per-frame controls included."""
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path) if self.path else None,
            "prompt": self.prompt,
            "seed": self.seed,
            "frames": self.frames,
            "alignment": {"noise": self.alignment.noise, "prompt": self.alignment.prompt},
            "options": dict(self.options),
            "tolerances": self.tolerances.describe(),
            "controls": [
                {"buttons": list(c.buttons), "mouse": list(c.mouse), "scroll": c.scroll} for c in self.controls
            ],
        }


_TOP_KEYS = {"name", "description", "prompt", "seed", "frames", "controls", "alignment", "options", "pairs", "tolerances",
             "max_capture_bytes"}
_CONTROL_KEYS = {"buttons", "mouse", "scroll"}


def load_case(path: str | Path) -> Case:
    path = Path(path)
    if not path.is_file():
        raise UserError("case file not found", path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not valid TOML: {exc}", path) from None
    return parse_case(data, path)


def parse_case(data: dict[str, Any], path: Path | None = None) -> Case:
    def fail(key: str, reason: str):
        raise UserError(f"{key}: {reason}", path)

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        fail(unknown[0], f"unknown key; allowed keys are {', '.join(sorted(_TOP_KEYS))}")
    for key in ("prompt", "seed", "frames"):
        if key not in data:
            fail(key, "missing (required)")

    name = data.get("name", path.stem if path else "case")
    _expect(isinstance(name, str) and name.strip() != "", "name", "must be a non-empty string", fail)
    _expect(all(c.isalnum() or c in "-_." for c in name), "name", f"{name!r} may only hold letters, digits, '-', '_' and '.'", fail)
    prompt = data["prompt"]
    _expect(isinstance(prompt, str), "prompt", f"must be a string, got {type(prompt).__name__}", fail)
    description = data.get("description", "")
    _expect(isinstance(description, str), "description", "must be a string", fail)
    seed = data["seed"]
    _expect(_is_int(seed) and 0 <= seed < 2**63, "seed", f"must be an integer in [0, 2^63), got {seed!r}", fail)
    frames = data["frames"]
    _expect(_is_int(frames) and frames >= 1, "frames", f"must be a positive integer, got {frames!r}", fail)
    _expect(frames <= 100_000, "frames", f"{frames} is more than the 100000 this harness accepts", fail)

    max_bytes = None
    if "max_capture_bytes" in data:
        from parity.budget import parse_bytes

        try:
            max_bytes = parse_bytes(data["max_capture_bytes"], "max_capture_bytes")
        except ValueError as exc:
            fail("max_capture_bytes", str(exc).removeprefix("max_capture_bytes "))
    controls = _parse_controls(data.get("controls", {}), frames, fail)
    alignment = _parse_alignment(data.get("alignment", {}), fail)
    options = data.get("options", {})
    _expect(isinstance(options, dict), "options", "must be a table", fail)
    _check_options(options, "options", path)
    pairs = _parse_pairs(data.get("pairs", []), fail, path)
    tolerances_raw = data.get("tolerances", {})
    _expect(isinstance(tolerances_raw, dict), "tolerances", "must be a table", fail)
    try:
        tolerances = parse_tolerances(tolerances_raw)
    except ValueError as exc:
        fail("tolerances", str(exc))
    return Case(
        name=name, prompt=prompt, seed=seed, frames=frames, controls=controls, alignment=alignment,
        options=dict(options), pairs=pairs, tolerances=tolerances, description=description, path=path,
        max_capture_bytes=max_bytes,
    )


def _parse_controls(raw: Any, frames: int, fail) -> tuple[FrameControls, ...]:
    _expect(isinstance(raw, dict), "controls", "must be a table", fail)
    unknown = sorted(set(raw) - _CONTROL_KEYS - {"segments"})
    if unknown:
        fail(f"controls.{unknown[0]}", f"unknown key; allowed keys are {', '.join(sorted(_CONTROL_KEYS | {'segments'}))}")
    base = _control_fields(raw, "controls", fail)
    per_frame = [dict(base) for _ in range(frames)]
    owner: list[int | None] = [None] * frames
    segments = raw.get("segments", [])
    _expect(isinstance(segments, list), "controls.segments", "must be an array of tables ([[controls.segments]])", fail)
    for i, seg in enumerate(segments):
        where = f"controls.segments[{i}]"
        _expect(isinstance(seg, dict), where, "must be a table", fail)
        unknown = sorted(set(seg) - _CONTROL_KEYS - {"frames"})
        if unknown:
            fail(f"{where}.{unknown[0]}", "unknown key; allowed keys are buttons, frames, mouse, scroll")
        span = seg.get("frames")
        _expect(
            isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span),
            f"{where}.frames", "must be [start, end) as two integers", fail,
        )
        start, end = span
        _expect(0 <= start < end <= frames, f"{where}.frames", f"[{start}, {end}) is not a non-empty range inside [0, {frames})", fail)
        for f in range(start, end):
            if owner[f] is not None:
                fail(f"{where}.frames", f"frame {f} is already set by controls.segments[{owner[f]}]; segments must not overlap")
            owner[f] = i
            per_frame[f].update(_control_fields(seg, where, fail))
    return tuple(FrameControls(**fields) for fields in per_frame)


def _control_fields(raw: dict, where: str, fail) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "buttons" in raw:
        b = raw["buttons"]
        _expect(isinstance(b, list) and all(_is_int(k) for k in b), f"{where}.buttons", "must be a list of integer key ids", fail)
        bad = [k for k in b if not 0 <= k < N_BUTTONS]
        _expect(not bad, f"{where}.buttons", f"key id {bad[0] if bad else ''} is outside [0, {N_BUTTONS})", fail)
        out["buttons"] = tuple(sorted(set(b)))
    if "mouse" in raw:
        m = raw["mouse"]
        _expect(
            isinstance(m, list) and len(m) == 2 and all(_is_number(v) for v in m),
            f"{where}.mouse", "must be [dx, dy], two finite numbers", fail,
        )
        out["mouse"] = (float(m[0]), float(m[1]))
    if "scroll" in raw:
        s = raw["scroll"]
        _expect(_is_number(s), f"{where}.scroll", "must be a finite number (the wheel value)", fail)
        out["scroll"] = float(s)
    return out


def _parse_alignment(raw: Any, fail) -> Alignment:
    _expect(isinstance(raw, dict), "alignment", "must be a table", fail)
    unknown = sorted(set(raw) - {"noise", "prompt"})
    if unknown:
        fail(f"alignment.{unknown[0]}", "unknown key; allowed keys are noise, prompt")
    for key in ("noise", "prompt"):
        value = raw.get(key, "shared")
        _expect(value in ("shared", "native"), f"alignment.{key}", f"must be \"shared\" or \"native\", got {value!r}", fail)
    return Alignment(noise=raw.get("noise", "shared"), prompt=raw.get("prompt", "shared"))


def _parse_pairs(raw: Any, fail, path) -> tuple[Pair, ...]:
    _expect(isinstance(raw, list), "pairs", "must be an array of tables ([[pairs]])", fail)
    pairs = []
    for i, p in enumerate(raw):
        where = f"pairs[{i}]"
        _expect(isinstance(p, dict), where, "must be a table", fail)
        unknown = sorted(set(p) - {"a", "b", "a_options", "b_options"})
        if unknown:
            fail(f"{where}.{unknown[0]}", "unknown key; allowed keys are a, b, a_options, b_options")
        for side in ("a", "b"):
            _expect(p.get(side) in SIDES, f"{where}.{side}", f"must be one of {', '.join(SIDES)}, got {p.get(side)!r}", fail)
            opts = p.get(f"{side}_options", {})
            _expect(isinstance(opts, dict), f"{where}.{side}_options", "must be a table", fail)
            if p[side] == "fastvideo" and opts:
                fail(f"{where}.{side}_options", "options apply to reference sides only")
            _check_options(opts, f"{where}.{side}_options", path)
        pairs.append(Pair(p["a"], p["b"], dict(p.get("a_options", {})), dict(p.get("b_options", {}))))
    return tuple(pairs)


def _check_options(options: dict, where: str, path) -> None:
    from reference.options import resolve_options

    try:
        resolve_options("upstream", options)
    except UserError as exc:
        raise UserError(f"{where}: {exc.message}", path) from None


def _expect(ok: bool, key: str, reason: str, fail) -> None:
    if not ok:
        fail(key, reason)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
