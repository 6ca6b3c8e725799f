"""What a comparison leaves behind: a console table, `summary.json` and `stages.csv`.

summary.json holds the verdict, the first divergence (stage, frame, step, numbers, tolerance or
oracle verdict), the config diff, one row per stage family (first failing stage and largest error),
the oracle the float stages were judged against, the metric parameters, and the paths of both captures.
stages.csv has one row per stage with every metric, for pandas or a spreadsheet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity.compare import ComparisonResult, StageResult


def console():
    """The rich console every command prints to."""
    import sys

    from rich.console import Console

    # CI logs are not terminals; a fixed width keeps tables readable there instead of 80 columns.
    return Console(width=None if sys.stdout.isatty() else 160)
from parity.metrics import PSNR_DATA_RANGE, SSIM_PARAMS

SUMMARY = "summary.json"
STAGES_CSV = "stages.csv"


def summary_dict(result: ComparisonResult) -> dict[str, Any]:
    first, first_value = result.first_divergence, result.first_value_divergence
    return {
        "verdict": "PASS" if result.passed else "FAIL",
        "a": {"side": result.a.name, "capture": str(result.a.run_dir), "complete": result.a.complete},
        "b": {"side": result.b.name, "capture": str(result.b.run_dir), "complete": result.b.complete},
        "test_model": bool(result.a.manifest.get("model", {}).get("test_model")),
        "alignment": result.b.manifest.get("alignment"),
        "first_divergence": _stage_summary(first),
        "first_value_divergence": _stage_summary(first_value),
        "first_divergent_frame": result.first_divergent_frame,
        "config_diff": [{"field": r.field, "a": r.a, "b": r.b, "differs": r.differs, "kind": r.kind,
                         "a_text": r.text_a, "b_text": r.text_b} for r in result.config],
        "structure": result.structure.to_dict() if result.structure is not None else None,
        "families": [
            {"family": f.family, "stages": f.stages, "failed": f.failed, "verdict": "PASS" if f.passed else "FAIL",
             "worst": _stage_summary(f.worst), "first_failing": _stage_summary(f.first_failing),
             "largest": _stage_summary(f.largest),
             "largest_oracle_ratio": f.largest_oracle_ratio.oracle.ratio if f.largest_oracle_ratio else None}
            for f in result.families()
        ],
        "oracle": oracle_summary(result),
        "tolerances": result.tolerances.describe(),
        "metric_parameters": {"ssim": SSIM_PARAMS, "psnr_data_range": PSNR_DATA_RANGE, "rel_l2_denominator": "||a||"},
    }


def oracle_summary(result: ComparisonResult) -> dict[str, Any] | None:
    """What the float stages were judged against: the oracle capture, its dtype, the inputs it shares."""
    if result.oracle is None:
        return None
    from parity.oracle import INPUTS

    purpose = result.oracle.manifest.get("purpose") or {}
    return {"capture": str(result.oracle.run_dir), "dtype": result.oracle.protocol.get("model_dtype"),
            "inputs": purpose.get("inputs", INPUTS), "multiplier": "3 when B is bf16/fp16, else 2 (PyTorch's rule)",
            "stages_judged": sum(s.oracle is not None for s in result.stages)}


def _stage_summary(stage: StageResult | None) -> dict[str, Any] | None:
    if stage is None:
        return None
    return {**stage.to_dict(), "explanation": stage.explain()}


def write_outputs(result: ComparisonResult, out_dir: Path) -> dict[str, Path]:
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / SUMMARY
    summary.write_text(json.dumps(summary_dict(result), indent=1, default=_json_safe, allow_nan=True))
    rows = []
    for s in result.stages:
        row = {"stage": s.key.id, "frame": s.key.frame, "step": s.key.step, "family": s.key.family, "status": s.status,
               "dtype_a": s.dtype_a, "dtype_b": s.dtype_b}
        if s.metrics:
            m = s.metrics.to_dict()
            m["worst_index"] = " ".join(map(str, m["worst_index"]))
            row.update(m)
        if s.tolerance:
            row.update(tol_rel_l2=s.tolerance.rel_l2, tol_max_abs=s.tolerance.max_abs)
        row["rule"] = s.rule
        if s.oracle:
            o = s.oracle
            row.update(oracle_err_a=o.err_a, oracle_err_b=o.err_b, oracle_ratio=o.ratio, oracle_allowed=o.allowed,
                       oracle_gain_a=o.gain_a, oracle_gain_b=o.gain_b, oracle_bias_a=o.bias_a, oracle_bias_b=o.bias_b,
                       oracle_failed=" ".join(o.failed), oracle_systematic=o.systematic.explain() if o.systematic else None)
        rows.append(row)
    csv = out_dir / STAGES_CSV
    pd.DataFrame(rows).to_csv(csv, index=False)
    return {"summary": summary, "csv": csv}


def _json_safe(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o).__name__)


def print_result(result: ComparisonResult, console=None, title: str | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    diff = Table(title=title or f"{result.a.name} (A) vs {result.b.name} (B): config diff", show_lines=False,
                 caption=f"{DIFFERS_MARK} differs in this run   {DESIGNED_MARK} designed difference of a side, "
                         "replaced in this run by the alignment policy (shared noise / prompt)")
    diff.add_column("", width=1)
    diff.add_column("field")
    diff.add_column("A", overflow="fold")
    diff.add_column("B", overflow="fold")
    for row in result.config:
        mark, style = _config_mark(row)
        diff.add_row(mark, escape(row.field), escape(row.text_a), escape(row.text_b), style=style)
    console.print(diff)
    print_structure(result.structure, console)

    judge = (f"against the fp32 oracle {result.oracle.run_dir.name}" if result.oracle is not None
             else "by fixed dtype bounds (no oracle)")
    stages = Table(title=f"stages per family: first failing and largest error; float stages judged {judge}")
    for col in ("family", "stages", "failed", "first failing stage", "largest error (B vs A)", "B/A vs oracle (max)", "verdict"):
        stages.add_column(col, justify="right" if col in ("stages", "failed") else "left", overflow="fold")
    for fam in result.families():
        ff, lg, lr = fam.first_failing, fam.largest, fam.largest_oracle_ratio
        stages.add_row(
            fam.family, str(fam.stages), str(fam.failed),
            escape(_failing_cell(ff)) if ff else "none",
            escape(f"{lg.key.id}: rel_l2 {lg.metrics.rel_l2:.3g}, max_abs {lg.metrics.max_abs:.3g}") if lg else "-",
            escape(f"{lr.oracle.ratio:.3g}x at {lr.key.id}") if lr else "-",
            "[green]PASS[/]" if fam.passed else "[red]FAIL[/]",
        )
    console.print(stages)
    first = result.first_divergence
    if first is None:
        console.print("[green]no divergence[/]: every stage within tolerance")
    else:
        console.print(f"[red]first divergence[/]: {escape(first.explain())}")
        fv = result.first_value_divergence
        if fv is not None and fv is not first:
            console.print(f"[red]first value divergence[/]: {escape(fv.explain())}")
    for side in (result.a, result.b):
        if not side.complete:
            console.print(f"[yellow]capture {escape(str(side.run_dir))} is incomplete[/]: {side.manifest.get('frames_written')} frames written")


def _failing_cell(s: StageResult) -> str:
    """`f7/cache_pass.output: rel_l2 0.010043 > 0.01` -- digits enough to tell value from bound."""
    from parity.numbers import vs

    if s.metrics is None:
        return f"{s.key.id} ({s.status})"
    if s.oracle is not None:
        o = s.oracle
        if "error" in o.failed:
            err, allowed = vs(o.err_b, o.allowed)
            return f"{s.key.id}: vs oracle {err} > {allowed} ({o.ratio:.3g}x A)"
        run = o.systematic
        return f"{s.key.id}: systematic {run.component} {run.mean:+.3g} beyond A's over {run.stages} stages (z {run.z:+.1f})"
    t, m = s.tolerance, s.metrics
    if t is not None and m.rel_l2 > t.rel_l2:
        value, bound = vs(m.rel_l2, t.rel_l2)
        return f"{s.key.id}: rel_l2 {value} > {bound}"
    if t is not None and m.max_abs > t.max_abs:
        value, bound = vs(m.max_abs, t.max_abs)
        return f"{s.key.id}: max_abs {value} > {bound}"
    if t is not None and m.changed_fraction > t.max_changed_fraction:
        value, bound = vs(m.changed_fraction, t.max_changed_fraction)
        return f"{s.key.id}: {value} of values differ > {bound}"
    if t is not None and abs(m.bias) > t.allowed_bias(m):
        value, bound = vs(abs(m.bias), t.allowed_bias(m))
        return f"{s.key.id}: bias {m.bias:+.3g} (|{value}| > {bound})"
    return f"{s.key.id}: NaN/Inf {m.nonfinite_a} vs {m.nonfinite_b}"


DIFFERS_MARK, DESIGNED_MARK, INFO_MARK = "≠", "◇", "·"


def _config_mark(row) -> tuple[str, str]:
    """(symbol, style) of a config row: the symbol carries the meaning without colour."""
    if not row.differs:
        return "", "dim"
    if row.kind == "designed":
        return DESIGNED_MARK, "cyan"
    return DIFFERS_MARK, "bold yellow"


def print_structure(diff, console) -> None:
    """The structural diff of the two live models: what differs, what is designed, a few notes."""
    from rich.markup import escape
    from rich.table import Table

    if diff is None:
        return
    if not diff.available:
        console.print(f"[dim]structure: {escape(diff.note)}[/]")
        return
    from parity.structure import DESIGNED, DIFFERS, INFO

    grouped = [f for f, _ in diff.grouped()]
    shown = [f for f in grouped if f.kind in (DIFFERS, DESIGNED)]
    infos = [f for f in grouped if f.kind == INFO]
    matched = "; ".join(f"{c}: {m}" for c, m in diff.matched.items())
    notes = (f"{sum(f.kind == INFO for f in diff.findings)} notes (buffers one side computes in forward, "
             "parameter-free helper modules) in summary.json and the report")
    if not shown:
        console.print(f"structure: [green]no difference[/] between the live models ({escape(matched)}); {notes}")
        return
    table = Table(title=f"structure diff of the live models ({len(diff.differences)} differing, "
                        f"{sum(f.kind == DESIGNED for f in diff.findings)} designed, "
                        f"{sum(f.kind == INFO for f in diff.findings)} notes)",
                  caption=f"{DIFFERS_MARK} changes numerics   {DESIGNED_MARK} designed (precision policy)   "
                          f"{INFO_MARK} note; matched {matched}")
    table.add_column("", width=1)
    for col in ("where", "what", "A", "B", "how obtained"):
        table.add_column(col, overflow="fold")
    marks = {DIFFERS: (DIFFERS_MARK, "bold yellow"), DESIGNED: (DESIGNED_MARK, "cyan"), INFO: (INFO_MARK, "dim")}
    for f in shown:
        mark, style = marks[f.kind]
        table.add_row(mark, escape(f.label), escape(f.what), escape(f.a), escape(f.b), escape(f.how), style=style)
    if infos:
        table.add_row(INFO_MARK, escape(notes), "", "", "", "", style="dim")
    console.print(table)
