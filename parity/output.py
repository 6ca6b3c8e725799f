"""What a comparison leaves behind: a console table, `summary.json` and `stages.csv`.

summary.json holds the verdict, the first divergence (stage, frame, step, numbers, tolerance),
the config diff, one row per stage family, the metric parameters, and the paths of both captures.
stages.csv has one row per stage with every metric, for pandas or a spreadsheet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity.compare import ComparisonResult, StageResult
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
             "worst": _stage_summary(f.worst)}
            for f in result.families()
        ],
        "tolerances": result.tolerances.describe(),
        "metric_parameters": {"ssim": SSIM_PARAMS, "psnr_data_range": PSNR_DATA_RANGE, "rel_l2_denominator": "||a||"},
    }


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

    stages = Table(title="stages (worst per family)")
    for col in ("family", "stages", "failed", "worst stage", "rel_l2", "max_abs", "cosine", "verdict"):
        stages.add_column(col, justify="right" if col in ("stages", "failed", "rel_l2", "max_abs", "cosine") else "left")
    for fam in result.families():
        w = fam.worst
        m = w.metrics if w else None
        stages.add_row(
            fam.family, str(fam.stages), str(fam.failed), escape(w.key.id if w else "-") + ("" if not w or w.passed else f" ({w.status})"),
            f"{m.rel_l2:.3g}" if m else "-", f"{m.max_abs:.3g}" if m else "-", f"{m.cosine:.6f}" if m else "-",
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
