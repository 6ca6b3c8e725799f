"""Comparison of two captures: config diff first, then every stage, then the first divergence.

    result = compare_captures(Capture.open(a_dir), Capture.open(b_dir), tolerances, oracle=Capture.open(o_dir))
    result.first_divergence        # StageResult of the earliest stage, in execution order, that failed
    result.passed                  # every stage within tolerance and both captures complete

Each stage is judged by the rule `parity.tolerances.stage_rule` picks: exact, against the fp32
oracle (A's side rerun in fp32, see `parity.oracle`; B must be no further from it than a multiple
of A's distance, in norm, gain and bias), or by the fixed bound of the coarser dtype when no
oracle is given or the family is an input or a case file sets its bound.

Stages are aligned by the protocol (frame, step, family), never by sigma values: a 3-step side has
no step 3, and that absence is itself a divergence, as is a cache pass that one side lacks or a
shape that differs. Config differences are listed, not judged: the stage verdicts say whether they
mattered. So is `result.structure`, the diff of the two live models' `structure.json`
(`parity.structure`: modules, parameter shapes and dtypes, norm eps, heads, RoPE tables, windows).

`first_divergence` is the earliest stage that is not a pass, whatever the kind (missing, shape,
values). `first_value_divergence` is the earliest stage present on both sides with the same shape
whose values exceed the tolerance; its frame is the "first divergent frame" of a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity import native_noise
from parity.capture import LAYOUTS, Capture, StageKey, manifest_value, ran_compiled
from parity.config_words import USED, field_value, row_kind, words
from parity.frame_pool import frame_map
from parity.metrics import Metrics, compare_arrays, compare_frames
from parity.numbers import vs
from parity.tolerances import (DTYPE, EXACT, FAMILIES, ORACLE, OracleVerdict, Tolerance, Tolerances, coarser,
                               judge_against_oracle, judge_systematic, stage_rule)
from parity.structure import StructureDiff, diff_captures

PASS, FAIL, MISSING_A, MISSING_B, SHAPE = "pass", "fail", "missing in A", "missing in B", "shape mismatch"
NOT_SAMPLED = "not sampled"
"""Left out on purpose by a capture policy (`every:K`): neither a pass nor a divergence."""

CONFIG_FIELDS = (
    ("sigmas", "protocol.sigmas"),
    ("steps", "protocol.steps"),
    ("sigma dtype", "protocol.sigma_dtype"),
    ("noise used", "protocol.noise_rule"),
    ("native noise rule", "protocol.native_noise_rule"),
    ("noise dtype", "protocol.noise_dtype"),
    ("encoder class", "protocol.encoder_class"),
    ("encoder dtype", "protocol.encoder_dtype"),
    ("prompt mask", "protocol.prompt_mask"),
    ("prompt source", "protocol.prompt_source"),
    ("model dtype", "protocol.model_dtype"),
    ("cache mode", "protocol.cache_mode"),
    ("cache pass", "protocol.cache_pass"),
    ("VAE dtype", "protocol.vae_dtype"),
    ("decode input dtype", "protocol.decode_input_dtype"),
    ("latent scale", "protocol.latent_scale"),
    ("latent shift", "protocol.latent_shift"),
    ("strict weight load", "protocol.strict_load"),
    ("attention kernel", "options.sdpa_backend"),
    ("inference setup", "setup.summary"),
    ("runner", "runner.name"),
    ("profile", "runner.profile"),
    ("device", "device"),
    ("seed", "seed"),
    ("frames", "case.frames"),
    ("prompt", "case.prompt"),
    ("weights", "model.weights_sha256"),
)
"""(label, dotted manifest path) of each config-diff row, protocol first. Rows named in
`parity.config_words.DERIVED` (noise used, native noise rule, attention kernel, profile) are read per
runner instead, since the reference and FastVideo runners record them in different places."""


@dataclass
class ConfigRow:
    field: str
    a: Any
    b: Any
    kind: str = USED
    """`used` (what this run used) or `designed` (a side's own design the alignment policy replaced)."""

    @property
    def differs(self) -> bool:
        return self.a != self.b

    @property
    def text_a(self) -> str:
        return words(self.field, self.a)

    @property
    def text_b(self) -> str:
        return words(self.field, self.b)


def config_rows(a: dict, b: dict) -> list[ConfigRow]:
    """The config diff of two manifests, one row per `CONFIG_FIELDS` entry."""
    return [ConfigRow(label, field_value(a, label, path), field_value(b, label, path), row_kind(label, a, b))
            for label, path in CONFIG_FIELDS]


@dataclass
class StageResult:
    key: StageKey
    status: str
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    metrics: Metrics | None = None
    tolerance: Tolerance | None = None
    floor: Tolerance | None = None
    """The calibrated noise floor of this family, when floors were given."""
    rule: str | None = None
    """How the values were judged: `exact`, `oracle`, `dtype`, `case` (the case file's bound for the
    family) or `floors` (a calibrated floor); see `parity.tolerances`."""
    oracle: OracleVerdict | None = None
    """A's and B's distance from the fp32 oracle, when the stage was judged against it."""
    detail: str | None = None
    """What the numbers alone do not say: the values of a small stage (`0 vs 0.001`, visible frames
    `[0, 1] vs [0]`), or why a native-noise stage passed or failed (`parity.native_noise`)."""
    vs_oracle: tuple[Metrics, Metrics] | None = field(default=None, repr=False)
    """A's and B's metrics against the oracle (oracle as reference), kept for the verdict."""

    @property
    def passed(self) -> bool:
        return self.status in (PASS, NOT_SAMPLED)

    def worst_location(self) -> str:
        """`channel 3, y 17, x 4` in the stage's own axes."""
        if not self.metrics or not self.metrics.worst_index:
            return ""
        names = LAYOUTS.get(self.key.family, ())
        if len(names) != len(self.metrics.worst_index):
            return str(list(self.metrics.worst_index))
        return ", ".join(f"{n} {i}" for n, i in zip(names, self.metrics.worst_index) if n not in ("batch", "frame"))

    def explain(self) -> str:
        """One line: what failed, by how much, against which tolerance."""
        if self.status in (MISSING_A, MISSING_B):
            return _missing_line(self.key, self.status)
        if self.key.family == "kv.frames" and self.detail and self.status != PASS:
            return f"{self.key.where()}: visible frames {self.detail}"
        if self.status == SHAPE:
            return f"{self.key.where()}: shape {self.shape_a} vs {self.shape_b}" + (f" ({self.detail})" if self.detail else "")
        if self.detail and (self.metrics is None or self.key.family in SMALL_FAMILIES):
            return f"{self.key.where()}: {self.detail}"
        m, t = self.metrics, self.tolerance
        if self.oracle is not None:
            text = f"{self.key.where()}: {self.oracle.explain()}; B vs A rel_l2 {m.rel_l2:.3g}, max_abs {m.max_abs:.3g}"
        elif self.rule == EXACT:
            text = f"{self.key.where()}: must be exact, max_abs {m.max_abs:.6g}, {m.changed_fraction:.3%} of the values differ"
        else:
            rel, rel_t = vs(m.rel_l2, t.rel_l2)
            mx, mx_t = vs(m.max_abs, t.max_abs)
            text = f"{self.key.where()}: rel_l2 {rel}" + (f" (allowed {rel_t})" if math.isfinite(t.rel_l2) else "")
            text += f", max_abs {mx} (allowed {mx_t})"
            if t.max_changed_fraction < 1:
                fr, fr_t = vs(m.changed_fraction, t.max_changed_fraction)
                text += f", {fr} of values differ (allowed {fr_t})"
        if self.key.family == "decoded" and m.numel:
            text += f", bias {m.bias:+.3g} levels"
            if t is not None and abs(m.bias) > t.allowed_bias(m):
                b, b_t = vs(abs(m.bias), t.allowed_bias(m))
                text += f" (|{b}| > allowed {b_t}: beyond rounding noise)"
        if self.floor is not None and self.floor.rel_l2 > 0:
            text += f", {m.rel_l2 / self.floor.rel_l2:.3g}x the calibrated floor"
        if m.nonfinite_a or m.nonfinite_b:
            text += f", NaN/Inf {m.nonfinite_a} vs {m.nonfinite_b}"
        if m.worst_index:
            text += f", worst at {self.worst_location()} ({m.worst_a:.4g} vs {m.worst_b:.4g})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.key.id, "frame": self.key.frame, "step": self.key.step, "family": self.key.family,
            "status": self.status, "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
            "shape_a": self.shape_a, "shape_b": self.shape_b,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "tolerance": {"rel_l2": self.tolerance.rel_l2, "max_abs": self.tolerance.max_abs} if self.tolerance else None,
            "rule": self.rule,
            "oracle": self.oracle.to_dict() if self.oracle else None,
            "floor": {"rel_l2": self.floor.rel_l2, "max_abs": self.floor.max_abs} if self.floor else None,
            "times_floor": (self.metrics.rel_l2 / self.floor.rel_l2) if self.floor and self.floor.rel_l2 > 0 and self.metrics else None,
            "worst_location": self.worst_location(),
            "detail": self.detail,
        }


@dataclass
class FamilySummary:
    family: str
    stages: int
    failed: int
    worst: StageResult | None
    """The failing stage that comes first, else the stage with the largest rel_l2."""
    first_failing: StageResult | None = None
    """The earliest stage of the family that is not a pass."""
    largest: StageResult | None = None
    """The stage with the largest rel_l2 of B vs A (growth after the first failure shows here)."""
    largest_oracle_ratio: StageResult | None = None
    """The stage where B is furthest from the oracle relative to A, when an oracle judged the family."""

    @property
    def passed(self) -> bool:
        return self.failed == 0


@dataclass
class ComparisonResult:
    a: Capture
    b: Capture
    config: list[ConfigRow]
    stages: list[StageResult]
    tolerances: Tolerances = field(default_factory=Tolerances)
    oracle: Capture | None = None
    """The fp32 oracle the float stages were judged against (None: fixed dtype bounds)."""
    structure: StructureDiff | None = None
    """The two live models' structural diff (listed like the config diff, not judged)."""

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages) and self.a.complete and self.b.complete

    def __bool__(self) -> bool:
        return self.passed

    @property
    def first_divergence(self) -> StageResult | None:
        return next((s for s in self.stages if not s.passed), None)

    @property
    def first_value_divergence(self) -> StageResult | None:
        return next((s for s in self.stages if s.status == FAIL), None)

    @property
    def first_divergent_frame(self) -> int | None:
        """The frame of the earliest per-frame stage whose values exceed the tolerance (run-level
        stages such as the native prompt encoding have no frame)."""
        s = next((s for s in self.stages if s.status == FAIL and s.key.frame is not None), None)
        return None if s is None else s.key.frame

    def families(self) -> list[FamilySummary]:
        out = []
        known = list(FAMILIES) + sorted({s.key.family for s in self.stages} - set(FAMILIES))
        for family in known:
            members = [s for s in self.stages if s.key.family == family]
            if not members:
                continue
            failed = [s for s in members if not s.passed]
            measured = [s for s in members if s.metrics is not None]
            largest = max(measured, key=lambda s: _sortable(s.metrics.rel_l2), default=None)
            judged = [s for s in members if s.oracle is not None]
            ratio = max(judged, key=lambda s: _sortable(s.oracle.ratio), default=None)
            out.append(FamilySummary(family, len(members), len(failed), failed[0] if failed else largest,
                                     failed[0] if failed else None, largest, ratio))
        return out


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x


def compare_captures(a: Capture, b: Capture, tolerances: Tolerances | None = None,
                     oracle: Capture | None = None) -> ComparisonResult:
    """`oracle`: the fp32 rerun of A's side (`parity.oracle`); without it, fixed dtype bounds."""
    tolerances = tolerances or Tolerances()
    config = config_rows(a.manifest, b.manifest)
    keys_a = {k.id: k for k in a.keys()}
    keys_b = {k.id: k for k in b.keys()}
    all_keys = sorted({**keys_a, **keys_b}.values(), key=lambda k: k.order)
    by_frame: dict[int | None, list[StageKey]] = {}
    for key in all_keys:
        by_frame.setdefault(key.frame, []).append(key)

    keys_o = {k.id for k in oracle.keys()} if oracle is not None else set()
    context = _Context(a, b, oracle, tolerances,
                       shared_noise=manifest_value(b.manifest, "alignment.noise") != "native",
                       vae_dtypes=(manifest_value(a.manifest, "protocol.vae_dtype"), manifest_value(b.manifest, "protocol.vae_dtype")),
                       model_dtype_b=manifest_value(b.manifest, "protocol.model_dtype"),
                       modes_apart=ran_compiled(a.manifest) != ran_compiled(b.manifest))

    def one_frame(keys: list[StageKey]) -> list[StageResult]:
        both = [k for k in keys if k.id in keys_a and k.id in keys_b and a.info(k)["shape"] == b.info(k)["shape"]]
        judged = [k for k in both if k.id in keys_o and oracle.info(k)["shape"] == a.info(k)["shape"]]
        ta, tb = a.tensors(both), b.tensors(both)
        to = oracle.tensors(judged) if judged else {}
        return [_compare_stage(k, context, k.id in keys_a, k.id in keys_b, ta.get(k), tb.get(k), to.get(k)) for k in keys]

    # Frames are independent: reading, hashing and the metrics of long runs spread over the cores.
    stages = [s for group in frame_map(one_frame, by_frame.values()) for s in group]
    stages.sort(key=lambda s: s.key.order)
    _judge_against_oracle(stages, context)
    return ComparisonResult(a, b, config, stages, tolerances, oracle, structure=diff_captures(a, b))


SMALL_FAMILIES = ("step.sigma", "step.timestamp", "cache_pass.sigma", "cache_pass.timestamp", "kv.frames")
"""Stages of a few values, shown as values (`frame 0, cache_pass.sigma: 0 vs 0.001`)."""


def _missing_line(key: StageKey, status: str) -> str:
    """`frame 0: cache pass missing in B`, `frame 0: step 4 missing in A`: what one side did not do."""
    side = status.removeprefix("missing in ")
    other = "B" if side == "A" else "A"
    if key.frame is None:
        return f"{key.family} missing in {side}"
    if key.family.startswith("cache_pass."):
        return f"frame {key.frame}: cache pass missing in {side} ({key.id})"
    if key.step is not None:
        return f"frame {key.frame}: step {key.step} missing in {side} ({key.id}; an extra model call in {other})"
    if key.family == "controls.mouse":
        return f"frame {key.frame} missing in {side} ({key.id})"
    return f"{key.where()}: missing in {side} ({key.id})"


def _small_values(t, as_list: bool = False) -> str:
    values = t.detach().reshape(-1).tolist()
    text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)
    return f"[{text}]" if as_list or len(values) != 1 else text



def _judge_against_oracle(stages: list[StageResult], ctx: _Context) -> None:
    """The oracle verdicts, once every stage is measured: each stage's distance, then per family the
    steady part of B's gain and bias beyond A's (see `parity.tolerances.judge_systematic`)."""
    families: dict[str, list[StageResult]] = {}
    for s in stages:
        if s.vs_oracle is not None:
            families.setdefault(s.key.family, []).append(s)
    for family, members in families.items():
        decoded = family == "decoded"
        oracle_dtype = manifest_value(ctx.oracle.manifest, "protocol.vae_dtype" if decoded else "protocol.model_dtype") or "float32"
        for s in members:
            # a decoded frame carries the error of every stage before it: B's coarsest dtype sets its multiplier
            dtype_b = coarser(ctx.vae_dtypes[1], ctx.model_dtype_b) if decoded else s.dtype_b
            s.oracle = judge_against_oracle(*s.vs_oracle, ctx.tolerances.oracle_rule(family, dtype_b), oracle_dtype, decoded)
        same_dtype = [s for s in members if (ctx.vae_dtypes[0] == ctx.vae_dtypes[1] if decoded else s.dtype_a == s.dtype_b)]
        ids = [s.key.id for s in same_dtype]
        by_id = {s.key.id: s for s in same_dtype}
        dtype_b = ctx.vae_dtypes[1] if decoded else (same_dtype[0].dtype_b if same_dtype else None)
        for component in ("gain", "bias"):
            deltas = [getattr(s.oracle, f"{component}_b") - getattr(s.oracle, f"{component}_a") for s in same_dtype]
            _mark(judge_systematic(component, deltas, ids, [s.key.step for s in same_dtype], dtype_b, decoded,
                                   ctx.modes_apart), by_id)
        # B's distance from the oracle steadily above A's: the norm's own steady part (stages either side gets exactly are left out)
        measured = [s for s in members if s.oracle.err_a > 0 and s.oracle.err_b > 0]
        _mark(judge_systematic("distance", [math.log(s.oracle.err_b / s.oracle.err_a) for s in measured],
                               [s.key.id for s in measured], [s.key.step for s in measured], dtype_b, decoded),
              {s.key.id: s for s in measured})
        for s in members:
            m = s.metrics
            if not (s.oracle.passed and m.nonfinite_a == 0 and m.nonfinite_b == 0):
                s.status = FAIL


def _mark(found, by_id: dict[str, StageResult]) -> None:
    """A steady run fails at its first stage (the earliest finding there is kept)."""
    if found is not None and by_id[found.first].oracle.systematic is None:
        by_id[found.first].oracle.systematic = found


@dataclass
class _Context:
    a: Capture
    b: Capture
    oracle: Capture | None
    tolerances: Tolerances
    shared_noise: bool
    vae_dtypes: tuple[str | None, str | None]
    model_dtype_b: str | None = None
    modes_apart: bool = False
    """One side's model runs under torch.compile, the other's eager (`tolerances.MODES_APART_FLOOR_ULPS`)."""


def _compare_stage(key: StageKey, ctx: _Context, in_a: bool, in_b: bool, ta=None, tb=None, to=None) -> StageResult:
    a, b, tolerances = ctx.a, ctx.b, ctx.tolerances
    if (not in_a and a.sampled_out(key)) or (not in_b and b.sampled_out(key)):
        return StageResult(key, NOT_SAMPLED)
    if not in_a:
        info = b.info(key)
        return StageResult(key, MISSING_A, dtype_b=info["dtype"], shape_b=info["shape"])
    if not in_b:
        info = a.info(key)
        return StageResult(key, MISSING_B, dtype_a=info["dtype"], shape_a=info["shape"])
    ia, ib = a.info(key), b.info(key)
    result = StageResult(key, PASS, ia["dtype"], ib["dtype"], ia["shape"], ib["shape"])
    if key.family == "noise.native":
        judged = native_noise.judge(key.frame, a, b)
        if judged is not None:
            result.status, result.detail = (PASS if judged[0] == "pass" else FAIL), judged[1]
            return result
    if key.family in SMALL_FAMILIES:
        ta = a.tensors([key])[key] if ta is None else ta  # tensors(): safe from the frame threads
        tb = b.tensors([key])[key] if tb is None else tb
        as_list = key.family == "kv.frames"
        result.detail = f"{_small_values(ta, as_list)} vs {_small_values(tb, as_list)}"
    if ia["shape"] != ib["shape"]:
        result.status = SHAPE
        return result
    ta = a.tensor(key) if ta is None else ta
    tb = b.tensor(key) if tb is None else tb
    decoded = key.family == "decoded"
    dtypes = ctx.vae_dtypes if decoded else (ia["dtype"], ib["dtype"])
    rule = stage_rule(key.family, *dtypes, oracle=to is not None, shared_noise=ctx.shared_noise)
    if rule == EXACT and ia["dtype"] != ib["dtype"] and coarser(ia["dtype"], ib["dtype"]):
        ta, tb = _rounded(ta, coarser(ia["dtype"], ib["dtype"])), _rounded(tb, coarser(ia["dtype"], ib["dtype"]))
    result.metrics = m = compare_frames(ta, tb) if decoded else compare_arrays(ta, tb)
    result.floor = tolerances.floor(key.family)
    finite_ok = m.nonfinite_a == 0 and m.nonfinite_b == 0
    if key.family in tolerances.overrides:
        rule = "case"
    elif rule == DTYPE and result.floor is not None and result.floor.rel_l2 > 0:
        rule = "floors"
    result.rule = rule
    if rule == ORACLE:
        result.vs_oracle = (compare_arrays(to, ta), compare_arrays(to, tb))
        ok = True  # judged by `_judge_against_oracle` once every stage is measured
    else:
        result.tolerance = Tolerance(0.0, 0.0) if rule == EXACT else tolerances.for_stage(key.family, *dtypes)
        ok = result.tolerance.allows_metrics(m)
    if not (finite_ok and ok):
        result.status = FAIL
    return result


def _rounded(t, dtype: str):
    """`t` rounded to `dtype` (exact stages compare in the coarser dtype of the two)."""
    import torch

    return t.to(getattr(torch, dtype)) if hasattr(t, "to") else t
