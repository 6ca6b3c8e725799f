"""Comparison of two captures: config diff first, then every stage, then the first divergence.

    result = compare_captures(Capture.open(a_dir), Capture.open(b_dir), tolerances)
    result.first_divergence        # StageResult of the earliest stage, in execution order, that failed
    result.passed                  # every stage within tolerance and both captures complete

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

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from parity.capture import LAYOUTS, Capture, StageKey
from parity.config_words import USED, field_value, row_kind, words
from parity.metrics import Metrics, compare_arrays, compare_frames
from parity.structure import StructureDiff, diff_captures
from parity.tolerances import FAMILIES, Tolerance, Tolerances

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
            return f"{self.key.where()}: present on one side only ({self.status})"
        if self.status == SHAPE:
            return f"{self.key.where()}: shape {self.shape_a} vs {self.shape_b}"
        m, t = self.metrics, self.tolerance
        text = f"{self.key.where()}: rel_l2 {m.rel_l2:.3g} (allowed {t.rel_l2:.3g}), max_abs {m.max_abs:.3g} (allowed {t.max_abs:.3g})"
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
            "floor": {"rel_l2": self.floor.rel_l2, "max_abs": self.floor.max_abs} if self.floor else None,
            "times_floor": (self.metrics.rel_l2 / self.floor.rel_l2) if self.floor and self.floor.rel_l2 > 0 and self.metrics else None,
            "worst_location": self.worst_location(),
        }


@dataclass
class FamilySummary:
    family: str
    stages: int
    failed: int
    worst: StageResult | None
    """The failing stage that comes first, else the stage with the largest rel_l2."""

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
        s = self.first_value_divergence
        return None if s is None else s.key.frame

    def families(self) -> list[FamilySummary]:
        out = []
        for family in FAMILIES:
            members = [s for s in self.stages if s.key.family == family]
            if not members:
                continue
            failed = [s for s in members if not s.passed]
            measured = [s for s in members if s.metrics is not None]
            worst = failed[0] if failed else max(measured, key=lambda s: s.metrics.rel_l2, default=None)
            out.append(FamilySummary(family, len(members), len(failed), worst))
        return out


def compare_captures(a: Capture, b: Capture, tolerances: Tolerances | None = None) -> ComparisonResult:
    tolerances = tolerances or Tolerances()
    config = config_rows(a.manifest, b.manifest)
    keys_a = {k.id: k for k in a.keys()}
    keys_b = {k.id: k for k in b.keys()}
    all_keys = sorted({**keys_a, **keys_b}.values(), key=lambda k: k.order)
    by_frame: dict[int | None, list[StageKey]] = {}
    for key in all_keys:
        by_frame.setdefault(key.frame, []).append(key)

    def one_frame(keys: list[StageKey]) -> list[StageResult]:
        both = [k for k in keys if k.id in keys_a and k.id in keys_b and a.info(k)["shape"] == b.info(k)["shape"]]
        ta, tb = a.tensors(both), b.tensors(both)
        return [_compare_stage(k, a, b, k.id in keys_a, k.id in keys_b, tolerances, ta.get(k), tb.get(k)) for k in keys]

    # Frames are independent: decoding, hashing and SSIM of long runs spread over the cores
    # (numpy, safetensors and scikit-image's filters release the GIL for most of their work).
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        stages = [s for group in pool.map(one_frame, by_frame.values()) for s in group]
    stages.sort(key=lambda s: s.key.order)
    return ComparisonResult(a, b, config, stages, tolerances, structure=diff_captures(a, b))


def _compare_stage(key: StageKey, a: Capture, b: Capture, in_a: bool, in_b: bool, tolerances: Tolerances,
                   ta=None, tb=None) -> StageResult:
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
    if ia["shape"] != ib["shape"]:
        result.status = SHAPE
        return result
    ta = a.tensor(key) if ta is None else ta
    tb = b.tensor(key) if tb is None else tb
    result.metrics = compare_frames(ta, tb) if key.family == "decoded" else compare_arrays(ta, tb)
    result.tolerance = tolerances.for_stage(key.family, ia["dtype"], ib["dtype"])
    result.floor = tolerances.floor(key.family)
    m = result.metrics
    finite_ok = m.nonfinite_a == 0 and m.nonfinite_b == 0
    if not (finite_ok and result.tolerance.allows(m.rel_l2, m.max_abs)):
        result.status = FAIL
    return result
