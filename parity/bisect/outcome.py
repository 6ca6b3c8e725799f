"""One tested commit, as a row: verdict, first divergence, worst error per family, config diff.

    row = commit_row(sha, subject, result)           # from a ComparisonResult of upstream vs the commit
    Criterion.parse("step.sigma").failed(row)        # or "f3/step0.velocity", or None: any divergence
    changed_columns(previous_row, row)               # which columns moved between two tested commits
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from parity.capture import StageKey
from parity.errors import UserError
from parity.tolerances import FAMILIES

TESTED, SKIPPED = "tested", "skipped"


@dataclass(frozen=True)
class Criterion:
    """What makes a commit bad: any divergence, a failing stage family, or one failing stage."""

    text: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Criterion":
        if text in (None, "", "any"):
            return cls(None)
        if text not in FAMILIES:
            try:
                StageKey.from_id(text)
            except (ValueError, IndexError):
                raise UserError(f"--stage {text!r} is neither a stage family ({', '.join(FAMILIES)}) "
                                "nor a stage id such as f3/step0.velocity") from None
        return cls(text)

    def describe(self) -> str:
        return "any divergence" if self.text is None else f"{self.text} diverges"

    def first(self, row: "CommitRow") -> str | None:
        """The divergence this criterion looks at, in one line: the first of any kind, or the first
        failing stage of the criterion's family; None when there is none."""
        if self.text is None:
            return row.first_divergence_text
        family = self.text if self.text in FAMILIES else StageKey.from_id(self.text).family
        return row.family_first.get(family) if self.failed(row) else None

    def failed(self, row: "CommitRow") -> bool:
        """Whether a tested commit is bad by this criterion (rows keep what every criterion needs)."""
        if self.text is None:
            return row.verdict != "PASS"
        if self.text in FAMILIES:
            return self.text in row.failed_families
        return self.text in row.failed_stages


@dataclass
class CommitRow:
    commit: str
    subject: str
    status: str
    """`tested` or `skipped`."""
    reason: str | None = None
    """Why a commit was skipped."""
    verdict: str | None = None
    """PASS / FAIL of the whole comparison (tested commits)."""
    first_divergence: str | None = None
    """Stage id of the first divergence of any kind (values, missing stage, shape)."""
    first_divergence_text: str | None = None
    families: dict[str, float] = field(default_factory=dict)
    """Worst rel_l2 per family; a family with a stage present on one side only is `inf`."""
    failed_families: list[str] = field(default_factory=list)
    failed_stages: list[str] = field(default_factory=list)
    """Ids of every stage that is not a pass."""
    family_first: dict[str, str] = field(default_factory=dict)
    """Per failing family, the explanation of its first failing stage."""
    config: dict[str, Any] = field(default_factory=dict)
    """Config-diff fields that differ from upstream, with this commit's value."""
    capture: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    label: str | None = None
    """good/bad (or the reversed terms), set by the bisect that tested it."""

    @property
    def short(self) -> str:
        return self.commit[:9]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CommitRow":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def commit_row(commit: str, subject: str, result) -> CommitRow:
    families: dict[str, float] = {}
    failed: list[str] = []
    family_first: dict[str, str] = {}
    for s in result.stages:
        fam = s.key.family
        value = s.metrics.rel_l2 if s.metrics is not None else (float("inf") if not s.passed else 0.0)
        families[fam] = max(families.get(fam, 0.0), value)
        if not s.passed and fam not in failed:
            failed.append(fam)
            family_first[fam] = s.explain()
    first = result.first_divergence
    config = {r.field: _config_value(r.field, r.b) for r in result.config
              if r.differs and r.field not in ("runner", "profile", "prompt source", "weights", "attention kernel")}
    return CommitRow(commit, subject, TESTED, verdict="PASS" if result.passed else "FAIL",
                     first_divergence=first.key.id if first else None, first_divergence_text=first.explain() if first else None,
                     families=families, failed_families=failed, config=config,
                     failed_stages=[s.key.id for s in result.stages if not s.passed], family_first=family_first)


def _config_value(name: str, value: Any) -> Any:
    """The part of a config value that tells commits apart: with shared noise, the side's own (native) rule."""
    if name == "noise rule" and isinstance(value, str) and "native: " in value:
        return value.split("native: ", 1)[1].rstrip(")")
    return value


CHANGE_RATIO = 1.5
"""A family's worst error "moved" when it changes by more than this factor (or passes/fails anew)."""


def changed_columns(before: CommitRow | None, after: CommitRow) -> list[str]:
    """Columns that differ between two tested commits: verdict, first divergence, config fields, families."""
    if before is None or before.status != TESTED or after.status != TESTED:
        return []
    out = []
    if before.verdict != after.verdict:
        out.append("verdict")
    if before.first_divergence != after.first_divergence:
        out.append("first divergence")
    for key in sorted(set(before.config) | set(after.config)):
        if before.config.get(key) != after.config.get(key):
            out.append(key)
    for fam in FAMILIES:
        a, b = before.families.get(fam), after.families.get(fam)
        if a is None and b is None:
            continue
        flipped = (fam in before.failed_families) != (fam in after.failed_families)
        if flipped or _moved(a or 0.0, b or 0.0):
            out.append(fam)
    return out


def _moved(a: float, b: float) -> bool:
    if a == b:
        return False
    if a == 0 or b == 0:
        return True
    return max(a, b) / min(a, b) > CHANGE_RATIO
