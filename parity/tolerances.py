"""When a stage passes: dtype-aware defaults, overridable per stage family in a case file.

Rule (one place): a stage passes when neither side has NaN/Inf where the other is finite,
`rel_l2 <= tol.rel_l2` and `max_abs <= tol.max_abs`. The default tolerance comes from the coarser
dtype of the two sides, because that dtype's rounding is the floor either side can reach:

| dtype            | rel_l2 | max_abs | why                                                       |
|------------------|--------|---------|-----------------------------------------------------------|
| float64          | 1e-12  | 1e-9    | summation order only                                      |
| float32          | 1e-5   | 1e-4    | reordered reductions, different kernels                   |
| float16          | 2e-3   | 1e-2    | 10-bit mantissa                                           |
| bfloat16         | 1e-2   | 0.125   | 8-bit mantissa: one ulp is 2^-8 relative, a few ulps adds up |
| int/bool         | 0      | 0       | masks, timestamps, visible KV frames: exact or wrong      |
| cache_pass.sigma | 0      | 0       | the cache pass runs at sigma 0, in any dtype              |
| uint8 (decoded)  | 2e-2   | 8       | one VAE in bf16 vs fp32 moves pixels by a few levels      |
| native prompt, bf16 vs fp32 | 5e-2 | 0.5 | a whole encoder in bf16 vs one in fp32 (see `_ENCODERS_APART`) |

A case overrides by stage family (`"step.velocity" = { rel_l2 = 0.02 }`) or sets `default = {...}`
for every family it does not name. Each verdict records the tolerance it used and the error it
would have needed, so a reviewer reads "needed 3e-2, allowed 1e-2".
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = (
    "prompt.embedding",
    "prompt.pad_mask",
    "prompt.native_embedding",
    "prompt.native_pad_mask",
    "controls.mouse",
    "controls.button",
    "controls.scroll",
    "noise.native",
    "noise",
    "step.sigma",
    "step.timestamp",
    "step.input",
    "step.velocity",
    "step.update",
    "latent",
    "cache_pass.sigma",
    "cache_pass.timestamp",
    "cache_pass.input",
    "cache_pass.output",
    "kv.frames",
    "kv.keys",
    "kv.values",
    "decoded",
)
"""Every stage family, in execution order within a frame (prompt first, once per run)."""

EXACT_FAMILIES = ("cache_pass.sigma",)
"""Float stages that are exact or wrong whatever the dtype: the cache pass runs at sigma 0 (timestamps,
masks and visible-frame lists are integers, exact by dtype already)."""


@dataclass(frozen=True)
class Tolerance:
    rel_l2: float
    max_abs: float

    def allows(self, rel_l2: float, max_abs: float) -> bool:
        return rel_l2 <= self.rel_l2 and max_abs <= self.max_abs


_BY_DTYPE = {
    "float64": Tolerance(1e-12, 1e-9),
    "float32": Tolerance(1e-5, 1e-4),
    "float16": Tolerance(2e-3, 1e-2),
    "bfloat16": Tolerance(1e-2, 0.125),
}
_EXACT = Tolerance(0.0, 0.0)
_DECODED = Tolerance(2e-2, 8.0)
_ENCODERS_APART = Tolerance(5e-2, 0.5)
"""A side's own prompt encoding when one encoder ran in bf16 and the other in fp32 (FastVideo keeps
UMT5 in fp32, upstream casts it to bf16): rounding accumulates over every encoder layer (measured
rel_l2 0.026 / max_abs 0.10 on the tiny checkpoint's UMT5). What the stage must catch is larger:
padded rows not zeroed (~1), T5EncoderModel instead of UMT5 (0.08)."""
_PRECISION = ["float64", "float32", "float16", "bfloat16"]


def default_tolerance(family: str, dtype_a: str, dtype_b: str) -> Tolerance:
    if family in EXACT_FAMILIES:
        return _EXACT
    if family == "prompt.native_embedding" and dtype_a != dtype_b:
        return _ENCODERS_APART
    if family == "decoded":
        return _DECODED
    floats = [d for d in (dtype_a, dtype_b) if d in _BY_DTYPE]
    if not floats:
        return _EXACT
    return _BY_DTYPE[max(floats, key=_PRECISION.index)]


@dataclass(frozen=True)
class Tolerances:
    """Per-family overrides on top of the dtype defaults, and optionally calibrated floors.

    With floors (see `parity.diagnose.calibrate`), a family whose floor is nonzero is allowed
    `floor_multiple` x its floor, and verdicts report "x times the floor"; a case override still wins.
    """

    overrides: dict[str, Tolerance] = field(default_factory=dict)
    default: Tolerance | None = None
    floors: dict[str, Tolerance] = field(default_factory=dict)
    floor_multiple: float = 4.0

    def for_stage(self, family: str, dtype_a: str, dtype_b: str) -> Tolerance:
        if family in self.overrides:
            return self.overrides[family]
        floor = self.floors.get(family)
        if floor is not None and floor.rel_l2 > 0:
            return Tolerance(self.floor_multiple * floor.rel_l2, self.floor_multiple * floor.max_abs)
        if self.default is not None:
            return self.default
        return default_tolerance(family, dtype_a, dtype_b)

    def floor(self, family: str) -> Tolerance | None:
        return self.floors.get(family)

    def with_floors(self, floors: dict[str, Tolerance], multiple: float = 4.0) -> "Tolerances":
        return Tolerances(dict(self.overrides), self.default, dict(floors), multiple)

    def describe(self) -> dict:
        out = {k: {"rel_l2": v.rel_l2, "max_abs": v.max_abs} for k, v in self.overrides.items()}
        if self.default:
            out["default"] = {"rel_l2": self.default.rel_l2, "max_abs": self.default.max_abs}
        return out


def parse_tolerances(raw: dict) -> Tolerances:
    """The `[tolerances]` table of a case; raises ValueError naming the offending key."""
    overrides: dict[str, Tolerance] = {}
    default = None
    for key, spec in raw.items():
        if key != "default" and key not in FAMILIES:
            raise ValueError(f"{key!r} is not a stage family; expected default or one of {', '.join(FAMILIES)}")
        if not isinstance(spec, dict) or not spec or set(spec) - {"rel_l2", "max_abs"}:
            raise ValueError(f"{key!r} must be a table with rel_l2 and/or max_abs")
        for name, value in spec.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{key}.{name} must be a number >= 0, got {value!r}")
        base = Tolerance(float("inf"), float("inf"))
        tol = Tolerance(float(spec.get("rel_l2", base.rel_l2)), float(spec.get("max_abs", base.max_abs)))
        if key == "default":
            default = tol
        else:
            overrides[key] = tol
    return Tolerances(overrides, default)
