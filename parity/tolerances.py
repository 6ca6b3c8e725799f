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
  2 otherwise, plus a small absolute floor for stages A gets exactly). A norm cannot see a
  systematic sub-ulp error (a 1.001 scale on a bf16 tensor is below one ulp per element), nor can
  it see anything smaller than the error both sides share: on the tiny real-architecture model both
  bf16 sides are 18% from the fp32 oracle but 1.2% from each other (the same ops round the same
  way). So the steady part is judged too, pooled over the family, from three numbers per stage:
  B's least-squares gain against the oracle minus A's, B's mean bias minus A's, and
  log(err_B / err_A). Rounding makes each wander around 0 from stage to stage; a bug makes it
  steady. The earliest run of at least 3 consecutive stages whose mean is >= SIGMAS standard
  errors from 0 (each stage's spread measured over the frames at its denoise step) and above a
  floor (gain, bias: a quarter of B's unit roundoff, one unit roundoff when one side is compiled and
  the other eager; decoded bias 0.1 levels; distance: 1.25x)
  fails at the stage where it begins: a 1.001 velocity scale is a steady +1e-3 from frame 0 on, a
  one-frame-shorter window keeps B further from the oracle than A from the first frame it changes.
  Gain and bias are judged where A and B compute the stage in the same dtype (a B that decodes in
  fp32 where A decodes in bf16 differs steadily by design). The verdict reads "B is 1.3x as far
  from the fp32 oracle as A" and names the run. Numbers: docs/oracle.md.
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
| KV keys / values, bf16 or fp16 | 5e-2 | any | intermediate tensors: never judged by the oracle (see `_KV_REDUCED`) |

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
"""A steady signed difference (gain, bias) beyond this many spreads is not rounding. Measured on a
correct FastVideo head vs world_engine in bf16 (24 frames, tiny real architecture): strongest runs
stay within |z| 5.1; a 1.001 velocity scale reaches 10 (docs/oracle.md)."""


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
KV_FAMILIES = frozenset({"kv.keys", "kv.values"})
"""The cache's keys and values (or their digests): judged by the dtype rule, never the oracle. They are
tensors inside the model, rounded wherever the execution mode rounds: world_engine compiled (fused norm
and projection, one rounding) sits 4x closer to the fp32 oracle at layer 0 than the same code run eager,
with a steady one-ulp gain, while the velocities of the two stay within 2% of each other's oracle distance
(tiny real architecture, bf16, CPU). An upstream run compiled, as `WorldEngine` runs it, against an eager
port would fail there on a correct port. What these stages exist to catch is far larger: a wrong frame
written, values stored as keys, a frozen or doubled cache pass (rel_l2 ~1)."""
_KV_REDUCED = Tolerance(5e-2, math.inf)
"""KV keys/values in bf16/fp16: compiled upstream vs an eager port measured 0.015 (digests, tiny model);
the bound is ~13 bf16 ulps, max_abs unbounded since post-RoPE keys are large (the relative norm carries it)."""


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
    if family in INPUT_FAMILIES or family in KV_FAMILIES or not oracle:
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
    if family in KV_FAMILIES and worst in ("bfloat16", "float16"):
        return _KV_REDUCED
    return _EXACT if worst is None else _BY_DTYPE[worst]


@dataclass(frozen=True)
class OracleRule:
    """err_B <= multiplier x err_A + floor per stage (see the module docstring)."""

    multiplier: float
    floor: float = 1e-5
    """Absolute floor on rel_l2 (PyTorch: tol / 10)."""

    @classmethod
    def for_dtype(cls, dtype_b: str, floor: float = 1e-5) -> "OracleRule":
        return cls(3.0 if dtype_b in ("bfloat16", "float16") else 2.0, floor)


UNIT_ROUNDOFF = {"bfloat16": 2.0**-9, "float16": 2.0**-11, "float32": 2.0**-24, "float64": 2.0**-53}
SYSTEMATIC_FLOOR_ULPS = 0.25
"""A systematic gain or bias of B beyond A's smaller than a quarter of B's unit roundoff is not a
finding even when it is steady (a 1.001 scale in bf16 is half the unit roundoff 2^-9)."""
MODES_APART_FLOOR_ULPS = 1.0
"""The same floor when one side runs under torch.compile and the other eager (`setup.compile` of the
manifests differs): fused kernels keep fp32 between ops and round once, eager rounds after every op,
which shifts the gain steadily by a fraction of an ulp. Measured on an H200 at Waypoint-1-Small's size,
world_engine compiled vs FastVideo eager, bf16, 16 frames: a steady velocity gain of -5.3e-4 (z = -6.4)
on a port that passes every other rule; one unit roundoff (2^-9 = 1.95e-3) is 3.7x that. The price: a
sub-ulp scale bug (x1.001) is only found between sides that execute alike."""
DECODED_BIAS_FLOOR = 0.1
"""Decoded frames: a steady bias of B beyond A's below 0.1 uint8 levels is not a finding."""
DISTANCE_FLOOR = math.log(1.25)
"""A B steadily further from the oracle than A by less than 25% on average is not a finding."""


def systematic_floor(component: str, dtype_b: str | None, decoded: bool, modes_apart: bool = False) -> float:
    if component == "distance":
        return DISTANCE_FLOOR
    if decoded:
        return DECODED_BIAS_FLOOR
    ulps = MODES_APART_FLOOR_ULPS if modes_apart else SYSTEMATIC_FLOOR_ULPS
    return ulps * UNIT_ROUNDOFF.get(dtype_b or "", 2.0**-9)


@dataclass
class Systematic:
    """A steady signed difference between B and A, measured against the oracle, over a run of stages."""

    component: str
    """`gain` (least-squares scale), `bias` (mean offset, relative to the oracle's rms; levels when
    decoded) or `distance` (log of err_B / err_A)."""
    first: str
    last: str
    """Stage ids where the run starts and ends (execution order within the family)."""
    stages: int
    mean: float
    """Mean of B's value minus A's over the run."""
    z: float
    """mean / (the stage-to-stage spread of that difference / sqrt(stages))."""
    floor: float

    def explain(self) -> str:
        from parity.numbers import vs

        if self.component == "distance":
            ratio, floor = vs(math.exp(self.mean), math.exp(self.floor))
            return (f"B is steadily further from the oracle than A: {ratio}x A's distance on average over "
                    f"{self.stages} stage(s) {self.first}..{self.last} (z = {self.z:+.1f}, rounding noise stays within "
                    f"|z| < {SIGMAS:g}; allowed on average {floor}x)")
        unit = " levels" if self.component == "bias" and self.floor == DECODED_BIAS_FLOOR else ""
        mean, floor = vs(abs(self.mean), self.floor)
        return (f"systematic {self.component}: B's {self.component} against the oracle is {self.mean:+.3g}{unit} beyond A's "
                f"on average over {self.stages} stage(s) {self.first}..{self.last} (z = {self.z:+.1f}, rounding noise "
                f"stays within |z| < {SIGMAS:g}; |{mean}| > floor {floor})")


def judge_systematic(component: str, deltas, ids: list[str], steps: list, dtype_b: str | None, decoded: bool,
                     modes_apart: bool = False) -> Systematic | None:
    """The earliest steady run of B-minus-A `deltas` (one per stage, execution order; `steps`: each
    stage's denoise step, whose spread it is measured against) beyond rounding noise: |z| >= SIGMAS
    and |mean| above `systematic_floor` (`modes_apart`: one side compiled, the other eager); else None."""
    from parity.metrics import strongest_run

    floor = systematic_floor(component, dtype_b, decoded, modes_apart)
    run = strongest_run(deltas, steps, min_z=SIGMAS, min_mean=floor)
    if run is not None and component == "distance" and run.mean < 0:
        return None  # B steadily closer to the oracle than A is no finding
    if run is None:
        return None
    return Systematic(component, ids[run.start], ids[run.stop - 1], run.stop - run.start, run.mean, run.z, floor)


@dataclass
class OracleVerdict:
    """One stage judged against the oracle: A's and B's distance from it, and what B was allowed."""

    oracle_dtype: str
    err_a: float
    err_b: float
    allowed: float
    gain_a: float
    gain_b: float
    bias_a: float
    bias_b: float
    bias_unit: str
    """`relative` (bias / rms of the oracle) or `levels` (decoded frames)."""
    multiplier: float
    systematic: Systematic | None = None
    """Set on the first stage of a steady gain or bias run of B beyond A's (see `judge_systematic`)."""

    @property
    def failed(self) -> tuple[str, ...]:
        """Which checks failed: `error` (distance), `systematic` (steady gain or bias)."""
        return tuple(n for n, bad in (("error", not self.err_b <= self.allowed), ("systematic", self.systematic is not None)) if bad)

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
        if self.systematic is not None:
            text += "; " + self.systematic.explain()
        return text

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "failed": list(self.failed), "ratio": self.ratio}


def relative_bias(vs_oracle, decoded: bool) -> float:
    """A side's mean bias against the oracle: in levels for decoded frames, else over the oracle's rms."""
    return vs_oracle.bias if decoded else vs_oracle.bias / (vs_oracle.rms_a or 1.0)


def judge_against_oracle(a_vs_o, b_vs_o, rule: OracleRule, oracle_dtype: str, decoded: bool) -> OracleVerdict:
    """`a_vs_o`, `b_vs_o`: `parity.metrics.Metrics` of each side against the oracle (oracle as `a`).
    The systematic part is judged over the whole family (`judge_systematic`) and set afterwards."""
    return OracleVerdict(oracle_dtype, a_vs_o.rel_l2, b_vs_o.rel_l2, rule.multiplier * a_vs_o.rel_l2 + rule.floor,
                         a_vs_o.gain, b_vs_o.gain, relative_bias(a_vs_o, decoded), relative_bias(b_vs_o, decoded),
                         "levels" if decoded else "relative", rule.multiplier)


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
