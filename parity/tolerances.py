"""When a stage passes: one table of rules, chosen per stage from its family and dtypes.

Every stage is judged by one of three rules (`stage_rule` picks it):

- **exact**: controls, sigmas, timestamps, masks, any int/bool stage, and the noise when both sides
  draw the shared noise in the same dtype. The values must be equal once both are rounded to the
  coarser dtype of the two (a bf16 control and its fp32 twin are the same control).
- **oracle** (default for every float stage computed by the model when the pair is not fp32 on
  both sides): the reference side is run once more in fp32 on the same inputs (see
  `parity.oracle`). With err_X = rel_l2(X vs oracle), B passes when
      err_B <= multiplier x err_A + floor
  (PyTorch's `torch._dynamo.utils.same(..., fp64_ref=...)`: multiplier 3 when B is bf16/fp16,
  2 otherwise, plus a small absolute floor for stages A gets exactly), and its systematic part is
  no worse either: B's least-squares gain and mean bias against the oracle must be within
      multiplier x |A's| + SIGMAS standard errors + floor.
  A norm cannot see a systematic sub-ulp error (a 1.001 scale on a bf16 tensor is below one ulp
  per element); its gain can: random rounding gives a gain of ~ rms error / sqrt(N), a 1.001 scale
  gives 1e-3 on every element. The verdict reads "B is 1.3x as far from the fp32 oracle as A".
- **dtype**: fixed bounds from the coarser dtype of the two sides, for captures compared without
  an oracle (stored captures, `--no-oracle`), for inputs the oracle copies from A (prompt
  embedding, native noise), and for stages where A runs finer than B (then A is nearly an oracle):

| dtype            | rel_l2 | max_abs | why                                                       |
|------------------|--------|---------|-----------------------------------------------------------|
| float64          | 1e-12  | 1e-9    | summation order only                                      |
| float32          | 1e-5   | 1e-4    | reordered reductions, different kernels                   |
| float16          | 2e-3   | 1e-2    | 10-bit mantissa                                           |
| bfloat16         | 1e-2   | 0.125   | 8-bit mantissa: one ulp is 2^-8 relative, a few ulps adds up |
| native prompt, bf16 vs fp32 | 5e-2 | 0.5 | a whole encoder in bf16 vs one in fp32 (see `_ENCODERS_APART`) |

Integers and bools (timestamps, masks, visible KV frames) and the cache pass's sigma (0 in any dtype)
are exact or wrong.

Decoded frames (uint8) are judged by the dtype their VAEs ran in: when both decodes ran in fp32,
at most 1 level on at most 1% of the values; otherwise rel_l2 2e-2 and 8 levels (one VAE in bf16
vs fp32 moves pixels by a few levels). Every decoded stage also reports its signed mean difference
(bias, in levels); a bias beyond rounding noise (|bias| > floor + SIGMAS standard errors; floor
0.05 levels in fp32, 0.5 otherwise) fails: a VAE that truncates instead of rounding to uint8 is
0.5 levels low on average.

A case overrides by stage family (`"step.velocity" = { rel_l2 = 0.02 }`; that family is then
judged by the fixed bound even with an oracle) or sets `default = {...}` for every family it does
not name that has no oracle verdict. Calibrated floors (`calibrate`) raise the dtype bound to 4x
the floor and the oracle's absolute floor to 4x the floor. Each verdict records the rule and the
bound it used, so a reviewer reads "needed 3e-2, allowed 1e-2".
"""

from __future__ import annotations

import math
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



EXACT, ORACLE, DTYPE = "exact", "oracle", "dtype"
"""The three rules; `StageResult.rule` names the one a stage was judged by (`case` when a case
file's bound for the family was used, `floors` when a calibrated floor set it)."""

SIGMAS = 6.0
"""A signed component (gain, bias) beyond this many standard errors is not rounding noise. Measured
on bf16 vs bf16 pairs of the tiny model: correct sides stay within ~3; a 1.001 velocity scale sits at 40."""


@dataclass(frozen=True)
class Tolerance:
    rel_l2: float
    max_abs: float
    max_changed_fraction: float = math.inf
    """Share of elements allowed to differ at all (decoded fp32: 1%)."""
    bias_floor: float = math.inf
    """Allowed |mean(B - A)| in the stage's units beyond SIGMAS standard errors (decoded: levels)."""

    def allows(self, rel_l2: float, max_abs: float) -> bool:
        return rel_l2 <= self.rel_l2 and max_abs <= self.max_abs

    def allows_metrics(self, m) -> bool:
        """Every bound of this tolerance against a `parity.metrics.Metrics` of B vs A."""
        return (self.allows(m.rel_l2, m.max_abs) and m.changed_fraction <= self.max_changed_fraction
                and abs(m.bias) <= self.allowed_bias(m))

    def allowed_bias(self, m) -> float:
        return self.bias_floor + SIGMAS * m.bias_sigma


_BY_DTYPE = {
    "float64": Tolerance(1e-12, 1e-9),
    "float32": Tolerance(1e-5, 1e-4),
    "float16": Tolerance(2e-3, 1e-2),
    "bfloat16": Tolerance(1e-2, 0.125),
}
_EXACT = Tolerance(0.0, 0.0)
_DECODED = Tolerance(2e-2, 8.0, bias_floor=0.5)
_DECODED_FP32 = Tolerance(math.inf, 1.0, max_changed_fraction=0.01, bias_floor=0.05)
_ENCODERS_APART = Tolerance(5e-2, 0.5)
"""A side's own prompt encoding when one encoder ran in bf16 and the other in fp32 (FastVideo keeps
UMT5 in fp32, upstream casts it to bf16): rounding accumulates over every encoder layer (measured
rel_l2 0.026 / max_abs 0.10 on the tiny checkpoint's UMT5). What the stage must catch is larger:
padded rows not zeroed (~1), T5EncoderModel instead of UMT5 (0.08)."""
_PRECISION = ["float64", "float32", "float16", "bfloat16"]

EXACT_FAMILIES = frozenset({"prompt.pad_mask", "controls.mouse", "controls.button", "controls.scroll", "step.sigma",
                            "cache_pass.sigma"})
"""Float families that are still exact: what the protocol hands the model, not what it computes."""
_EXACT_WORDS = ("sigma", "timestamp", "mask", "controls.")
"""Families added later (cache-pass sigma, timestamps, ...) whose names say they are protocol inputs."""
INPUT_FAMILIES = frozenset({"prompt.embedding", "noise", "prompt.native_embedding", "noise.native"})
"""Inputs: the oracle receives A's values, so it cannot judge B's; the dtype rule does."""


def coarser(dtype_a: str | None, dtype_b: str | None) -> str | None:
    """The coarser float dtype of the two, or None when neither is a float."""
    floats = [d for d in (dtype_a, dtype_b) if d in _BY_DTYPE]
    return max(floats, key=_PRECISION.index) if floats else None


def is_exact_family(family: str) -> bool:
    return family in EXACT_FAMILIES or (family not in INPUT_FAMILIES and family != "decoded"
                                        and any(w in family for w in _EXACT_WORDS))


def stage_rule(family: str, dtype_a: str, dtype_b: str, *, oracle: bool, shared_noise: bool = True) -> str:
    """EXACT, ORACLE or DTYPE for one stage (see the module docstring). `dtype_*` are the stage
    tensors' dtypes; for decoded frames, the dtypes the VAEs ran in. `oracle`: an oracle capture
    holds this stage."""
    if family != "decoded" and (coarser(dtype_a, dtype_b) is None or is_exact_family(family)):
        return EXACT
    if family == "noise" and shared_noise and dtype_a == dtype_b:
        return EXACT
    if family in INPUT_FAMILIES or not oracle:
        return DTYPE
    if dtype_a in _BY_DTYPE and dtype_b in _BY_DTYPE and _PRECISION.index(dtype_a) < _PRECISION.index(dtype_b):
        return DTYPE  # A runs finer than B: A is itself nearly the oracle, B gets its dtype's bound
    return ORACLE


def default_tolerance(family: str, dtype_a: str, dtype_b: str) -> Tolerance:
    """The fixed bound of the dtype rule; for decoded frames, dtypes are those the VAEs ran in."""
    if family == "prompt.native_embedding" and dtype_a != dtype_b:
        return _ENCODERS_APART
    if family == "decoded":
        return _DECODED_FP32 if {dtype_a, dtype_b} <= {"float32", "float64"} else _DECODED
    worst = coarser(dtype_a, dtype_b)
    return _EXACT if worst is None else _BY_DTYPE[worst]


@dataclass(frozen=True)
class OracleRule:
    """err_B <= multiplier x err_A + floor, and the same for |gain| and |bias| with SIGMAS standard
    errors on top (see the module docstring)."""

    multiplier: float
    floor: float = 1e-5
    """Absolute floor on rel_l2 and on the relative gain and bias (PyTorch: tol / 10)."""
    bias_floor_levels: float = 0.05
    """Decoded frames: the floor on |bias|, in uint8 levels."""

    @classmethod
    def for_dtype(cls, dtype_b: str, floor: float = 1e-5) -> "OracleRule":
        return cls(3.0 if dtype_b in ("bfloat16", "float16") else 2.0, floor)


@dataclass
class OracleVerdict:
    """One stage judged against the oracle: A's and B's distance from it, and what B was allowed."""

    oracle_dtype: str
    err_a: float
    err_b: float
    allowed: float
    gain_a: float
    gain_b: float
    gain_allowed: float
    bias_a: float
    bias_b: float
    bias_allowed: float
    bias_unit: str
    """`relative` (bias / rms of the oracle) or `levels` (decoded frames)."""
    multiplier: float
    failed: tuple[str, ...] = ()
    """Which checks failed: `error`, `gain`, `bias`."""

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def ratio(self) -> float:
        """err_B / err_A: "B is 1.3x as far from the oracle as A"."""
        if self.err_a == 0:
            return 1.0 if self.err_b == 0 else math.inf
        return self.err_b / self.err_a

    def explain(self) -> str:
        from parity.numbers import vs

        what = f"the {self.oracle_dtype.replace('float', 'fp')} oracle"
        ratio = "as close to" if self.ratio == 1.0 else f"{self.ratio:.3g}x as far from"
        err_b, allowed = vs(self.err_b, self.allowed)
        text = (f"B is {ratio} {what} as A (rel_l2 {err_b} vs A's {self.err_a:.3g}, "
                f"allowed {allowed} = {self.multiplier:g}x A's + floor)")
        if "gain" in self.failed:
            g, ga = vs(abs(self.gain_b), self.gain_allowed)
            text += f"; systematic scale: B's gain against {what} {self.gain_b:+.3g} (|{g}| > allowed {ga}; A's {self.gain_a:+.3g})"
        if "bias" in self.failed:
            unit = " levels" if self.bias_unit == "levels" else " x rms"
            b, ba = vs(abs(self.bias_b), self.bias_allowed)
            text += f"; systematic offset: B's mean bias {self.bias_b:+.3g}{unit} (|{b}| > allowed {ba}; A's {self.bias_a:+.3g})"
        return text

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "failed": list(self.failed), "ratio": self.ratio}


def judge_against_oracle(a_vs_o, b_vs_o, rule: OracleRule, oracle_dtype: str, decoded: bool) -> OracleVerdict:
    """`a_vs_o`, `b_vs_o`: `parity.metrics.Metrics` of each side against the oracle (oracle as `a`)."""
    m = rule.multiplier
    allowed = m * a_vs_o.rel_l2 + rule.floor
    gain_allowed = m * abs(a_vs_o.gain) + SIGMAS * math.hypot(a_vs_o.gain_sigma, b_vs_o.gain_sigma) + rule.floor
    if decoded:
        bias_a, bias_b, unit = a_vs_o.bias, b_vs_o.bias, "levels"
        bias_sig, bias_floor = math.hypot(a_vs_o.bias_sigma, b_vs_o.bias_sigma), rule.bias_floor_levels
    else:
        scale = b_vs_o.rms_a or 1.0
        bias_a, bias_b, unit = a_vs_o.bias / scale, b_vs_o.bias / scale, "relative"
        bias_sig, bias_floor = math.hypot(a_vs_o.bias_sigma, b_vs_o.bias_sigma) / scale, rule.floor
    bias_allowed = m * abs(bias_a) + SIGMAS * bias_sig + bias_floor
    failed = []
    if not b_vs_o.rel_l2 <= allowed:
        failed.append("error")
    if not decoded and not abs(b_vs_o.gain) <= gain_allowed:
        failed.append("gain")
    if not abs(bias_b) <= bias_allowed:
        failed.append("bias")
    return OracleVerdict(oracle_dtype, a_vs_o.rel_l2, b_vs_o.rel_l2, allowed, a_vs_o.gain, b_vs_o.gain, gain_allowed,
                         bias_a, bias_b, bias_allowed, unit, m, tuple(failed))


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

    def oracle_rule(self, family: str, dtype_b: str) -> OracleRule:
        """The oracle rule for B's dtype; a calibrated floor raises its absolute floor."""
        floor = self.floors.get(family)
        base = OracleRule.for_dtype(dtype_b)
        if floor is not None and floor.rel_l2 > 0:
            return OracleRule(base.multiplier, max(base.floor, self.floor_multiple * floor.rel_l2))
        return base

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
