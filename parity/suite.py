"""Runs cases against pairs of sides and writes every capture and comparison under one folder.

    out/
      index.json                              every case x pair: verdict, first divergence, paths
      <case>/captures/<label>/                one capture per distinct side run (see `_label`)
      <case>/<a-label>__vs__<b-label>/        summary.json, stages.csv (and the HTML report)

A side's capture is reused by every pair that needs the same run (upstream is run once per case
even when it is compared with both the script and FastVideo). A pair with a reduced-precision side
is judged against the fp32 oracle of its A side (`parity.oracle`), made once per A capture as
`<case>/captures/<A-label>.oracle-fp32/` and reused by every pair with that A.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from parity.capture import Capture
from parity.case import Case, Pair
from parity.compare import ComparisonResult, compare_captures
from parity.errors import UserError
from parity.output import summary_dict, write_outputs
from parity.runner import Runner, RunRequest


@dataclass
class SideConfig:
    """Where each side's model comes from; shared by the CLI, `make parity` and the pytest plugin."""

    snapshot: str | Path
    trust_remote_code: bool = False
    text_encoder: str | None = None
    hf_cache_dir: str | None = None
    fastvideo_bundle: str | None = None
    device: str = "cpu"
    code_source: str = "snapshot"
    """Reference sides: `snapshot` (its own .py files) or `world_engine` (see reference.world_engine_code)."""

    @classmethod
    def from_args(cls, args) -> "SideConfig":
        """From the command line's side options (`--snapshot`, `--device`, ...); the tiny checkpoint
        when no snapshot is named."""
        from parity.environment import default_device
        from parity.tiny import ensure_checkpoint

        return cls(snapshot=args.snapshot or ensure_checkpoint(), trust_remote_code=args.trust_remote_code,
                   text_encoder=args.text_encoder, hf_cache_dir=args.hf_cache_dir, fastvideo_bundle=args.fastvideo_bundle,
                   code_source=args.code_source, device=args.device or default_device())

    def runner(self, side: str) -> Runner:
        if side in ("upstream", "script"):
            from reference.runner import ReferenceRunner

            return ReferenceRunner(self.snapshot, profile=side, trust_remote_code=self.trust_remote_code,
                                   text_encoder=self.text_encoder, hf_cache_dir=self.hf_cache_dir,
                                   code_source=self.code_source)
        if side == "fastvideo":
            from parity.fastvideo import FastVideoRunner

            return FastVideoRunner(bundle=self.fastvideo_bundle, snapshot=self.snapshot,
                                   trust_remote_code=self.trust_remote_code, hf_cache_dir=self.hf_cache_dir)
        raise UserError(f"unknown side {side!r}")


def default_pairs(fastvideo_bundle: str | Path | None = None, snapshot: str | Path | None = None,
                  check_bundle: bool = True) -> tuple[tuple[Pair, ...], str | None]:
    """upstream vs script always; upstream vs fastvideo when FastVideo can be imported and a FastVideo
    bundle is named (or lies beside the snapshot; `check_bundle=False` asks about FastVideo only).
    Returns the pairs and, when FastVideo is left out, why."""
    from parity.fastvideo import bundle_status, fastvideo_status

    pairs = [Pair("upstream", "script")]
    ok, why = bundle_status(fastvideo_bundle, snapshot) if check_bundle else (True, "")
    if ok:
        ok, why = fastvideo_status()
    if ok:
        pairs.append(Pair("upstream", "fastvideo"))
    return tuple(pairs), (None if ok else why)


@dataclass
class PairOutcome:
    case: Case
    pair: Pair
    a_dir: Path
    b_dir: Path
    out_dir: Path
    result: ComparisonResult


@dataclass
class CaseRunner:
    """Runs one case's pairs, reusing captures between pairs."""

    sides: SideConfig
    out_root: Path
    log: Callable[[str], None] = print
    oracle: bool = True
    """Judge pairs with a reduced-precision side against A's fp32 oracle (False: fixed dtype bounds)."""
    _captures: dict[str, Path] = field(default_factory=dict)

    def run_case(self, case: Case, pairs: tuple[Pair, ...]) -> list[PairOutcome]:
        outcomes = []
        for pair in pairs:
            a_label = _label(pair.a, pair.a_options)
            a_dir = self._capture(case, pair.a, pair.a_options, a_label, prompt_from=None)
            share = case.alignment.prompt == "shared"
            b_label = _label(pair.b, pair.b_options, a_label if share else None)
            b_dir = self._capture(case, pair.b, pair.b_options, b_label, prompt_from=a_dir if share else None)
            a, b = Capture.open(a_dir), Capture.open(b_dir)
            oracle = self._oracle(case, pair, a_label, a, b)
            result = compare_captures(a, b, case.tolerances, oracle=oracle)
            out_dir = self.out_root / case.name / f"{a_label}__vs__{b_label}"
            write_outputs(result, out_dir)
            outcomes.append(PairOutcome(case, pair, a_dir, b_dir, out_dir, result))
        return outcomes

    def _oracle(self, case: Case, pair: Pair, a_label: str, a: Capture, b: Capture) -> Capture | None:
        from parity import oracle

        if not (self.oracle and oracle.needs_oracle(a, b) and oracle.can_make_oracle(a)):
            return None
        key = f"{case.name}/{a_label}{oracle.SUFFIX}"
        if key not in self._captures:
            out = oracle.default_location(a.run_dir)
            self.log(f"  run {case.name}: {a_label}{oracle.SUFFIX} (fp32 oracle of {a_label}, shared by its pairs)")
            oracle.make_oracle(self.sides.runner(pair.a), case, pair.a, a.run_dir, out, self.sides.device, dict(pair.a_options))
            self._captures[key] = out
        return Capture.open(self._captures[key])

    def _capture(self, case: Case, side: str, options: dict, label: str, prompt_from: Path | None) -> Path:
        key = f"{case.name}/{label}"
        if key not in self._captures:
            out = self.out_root / case.name / "captures" / label
            self.log(f"  run {case.name}: {label}")
            self.sides.runner(side).run(RunRequest(case, side, out, self.sides.device, dict(options), prompt_from))
            self._captures[key] = out
        return self._captures[key]


def _label(side: str, options: dict, prompt_from_label: str | None = None) -> str:
    """`script`, `script+1a2b3c4d` with option overrides, `...@upstream` with an injected prompt."""
    label = side
    if options:
        label += "+" + hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    if prompt_from_label:
        label += f"@{prompt_from_label}"
    return label


def index_entry(outcome: PairOutcome, out_root: Path) -> dict:
    """One row of index.json; paths are relative to the run folder, so the folder can move or merge."""
    s = summary_dict(outcome.result)
    return {
        "case": outcome.case.name, "pair": outcome.pair.name, "verdict": s["verdict"],
        "first_divergence": (s["first_divergence"] or {}).get("explanation"),
        "first_value_divergence": (s["first_value_divergence"] or {}).get("explanation"),
        "first_divergent_frame": s["first_divergent_frame"],
        "summary": str((outcome.out_dir / "summary.json").relative_to(out_root)),
        "captures": {"a": str(outcome.a_dir.relative_to(out_root)), "b": str(outcome.b_dir.relative_to(out_root))},
    }


def write_index(out_root: Path, outcomes: list[PairOutcome], notes: list[str]) -> Path:
    return write_index_entries(out_root, [index_entry(o, out_root) for o in outcomes], notes)


def write_index_entries(out_root: Path, entries: list[dict], notes: list[str]) -> Path:
    path = out_root / "index.json"
    path.write_text(json.dumps({"comparisons": entries, "notes": list(notes)}, indent=1))
    return path


def new_run_folder(root: Path, stamp: str) -> Path:
    """`root/parity-<stamp>`, never an existing folder: earlier results are never overwritten."""
    candidate = root / f"parity-{stamp}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = root / f"parity-{stamp}-{n}"
    candidate.mkdir(parents=True)
    return candidate
