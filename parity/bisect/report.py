"""What `bisect` and `bisect --walk` leave behind: JSON, a Markdown table, an HTML page, a console table.

    write_walk(out, rows, meta)          -> out/walk.json, walk.md, walk.html
    write_bisect(out, result, meta)      -> out/bisect.json, bisect.md, bisect.html

One row per tested commit: verdict, first divergence, the config fields that differ from upstream,
the worst rel_l2 per stage family, and which of those columns changed from the previous row
(`parity.bisect.outcome.changed_columns`), so a reviewer sees each commit that moved something.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity.bisect.outcome import TESTED, CommitRow, changed_columns
from parity.tolerances import FAMILIES

SHORT_FAMILY = {"prompt.embedding": "prompt", "prompt.pad_mask": "pad_mask", "controls.mouse": "mouse",
                "controls.button": "button", "controls.scroll": "scroll", "step.sigma": "sigma", "step.input": "input",
                "step.velocity": "velocity", "step.update": "update", "cache_pass.input": "cache in",
                "cache_pass.output": "cache out"}


def fmt_error(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "missing"
    return "0" if value == 0 else f"{value:.2g}"


def table(rows: list[CommitRow]) -> dict[str, Any]:
    """Columns and cells shared by the console, Markdown and HTML renderings."""
    families = [f for f in FAMILIES if any(r.families.get(f) or f in r.failed_families for r in rows)]
    tested = [r for r in rows if r.status == TESTED]
    # config fields that tell commits apart get a column each; those equal in every row are listed once
    config_keys = sorted({k for r in tested for k in r.config})
    varying = [k for k in config_keys if len({json.dumps(r.config.get(k), default=str) for r in tested}) > 1]
    constant = {k: tested[0].config[k] for k in config_keys if k not in varying}
    out, previous = [], None
    for r in rows:
        changed = changed_columns(previous, r)
        cells = {
            "commit": r.short, "subject": r.subject if len(r.subject) <= 50 else r.subject[:47] + "...", "label": r.label or "",
            "verdict": r.verdict if r.status == TESTED else "SKIP",
            "first divergence": r.first_divergence or ("none" if r.status == TESTED else (r.reason or "")),
            **{k: _short(r.config[k]) if k in r.config else "= upstream" for k in varying},
            **{f: fmt_error(r.families.get(f)) + ("!" if f in r.failed_families else "") for f in families},
        }
        notes = [_change_note(previous, r, c) for c in changed]
        out.append({"cells": cells, "changed": changed, "notes": notes, "status": r.status, "row": r})
        if r.status == TESTED:
            previous = r
    labels = ["label"] if any(r.label for r in rows) else []
    return {"families": families, "rows": out, "constant_config": constant,
            "columns": ["commit", "subject"] + labels + ["verdict", "first divergence"] + varying + families}


def _first_failing(row: CommitRow, family: str) -> str:
    return next((s for s in row.failed_stages if _family_of(s) == family), "pass")


def _family_of(stage_id: str) -> str:
    from parity.capture import StageKey

    try:
        return StageKey.from_id(stage_id).family
    except (ValueError, IndexError):
        return ""


def _change_note(before: CommitRow, after: CommitRow, column: str) -> str:
    """`sigma: f0/step1.sigma -> pass` for a family (its first failing stage before and after); the name otherwise."""
    if column not in FAMILIES:
        return column
    a, b = _first_failing(before, column), _first_failing(after, column)
    name = SHORT_FAMILY.get(column, column)
    return f"{name}: {a} -> {b}" if a != b else f"{name}: {fmt_error(before.families.get(column))} -> {fmt_error(after.families.get(column))}"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def markdown(view: dict[str, Any]) -> str:
    cols = view["columns"] + ["changed"]
    heads = [SHORT_FAMILY.get(c, c) for c in cols]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(cols)]
    for item in view["rows"]:
        cells = item["cells"]
        values = [_md(cells[c]) + (" *" if c in item["changed"] else "") for c in view["columns"]]
        values.append(_md("; ".join(item["notes"])))
        lines.append("| " + " | ".join(values) + " |")
    lines.append("")
    lines.append("rel_l2 worst per family against upstream; `!` the family fails its tolerance; `missing` a stage on one side only; "
                 "`*` changed from the previous tested row.")
    if view["constant_config"]:
        lines.append("Differs from upstream at every tested commit: "
                     + "; ".join(f"{k} {_short(v)}" for k, v in view["constant_config"].items()) + ".")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def print_table(view: dict[str, Any], console, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title)
    for c in view["columns"] + ["changed"]:
        t.add_column(SHORT_FAMILY.get(c, c), overflow="fold")
    for item in view["rows"]:
        cells = item["cells"]
        values = []
        for c in view["columns"]:
            text = escape(str(cells[c]))
            values.append(f"[bold yellow]{text}[/]" if c in item["changed"] else text)
        values.append(escape("; ".join(item["notes"])))
        t.add_row(*values, style="dim" if item["status"] != TESTED else None)
    console.print(t)
    if view["constant_config"]:
        console.print("differs from upstream at every tested commit: "
                      + "; ".join(f"{k} {_short(v)}" for k, v in view["constant_config"].items()), markup=False, highlight=False)


def _html(out: Path, name: str, title: str, view: dict[str, Any], meta: dict[str, Any], summary: list[str]) -> Path:
    from parity.report.templating import environment

    html = environment().get_template("bisect.html").render(
        page=name, title=title, families=[], standalone=True, standalone_links=[f"{name}.json", f"{name}.md"],
        view=view, meta=meta, summary=summary, short=SHORT_FAMILY)
    path = out / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    return path


def write_walk(out: Path, rows: list[CommitRow], meta: dict[str, Any]) -> dict[str, Path]:
    view = table(rows)
    moved = [f"{i['cells']['commit']} {i['cells']['subject'][:60]}: {', '.join(i['changed'])}" for i in view["rows"] if i["changed"]]
    data = {**meta, "rows": [r.to_dict() for r in rows],
            "changes": [{"commit": i["row"].commit, "changed": i["changed"]} for i in view["rows"] if i["changed"]]}
    paths = {"json": out / "walk.json", "md": out / "walk.md"}
    paths["json"].write_text(json.dumps(data, indent=1, default=str))
    paths["md"].write_text(markdown(view))
    paths["html"] = _html(out, "walk", f"walk {meta.get('range')}", view, meta, moved)
    return paths


def bisect_summary(result) -> list[str]:
    lines = []
    if result.first is not None:
        lines.append(f"first {result.terms.new} commit: {result.first.short} {result.first.subject}")
        for name, row in (("before", result.before), ("after", result.after)):
            if row is not None:
                if result.criterion.text is not None:
                    lines.append(f"first {result.criterion.text} divergence {name} it ({row.short}): {result.criterion.first(row) or 'none'}")
                lines.append(f"first divergence {name} it ({row.short}): {row.first_divergence_text or 'none'}")
    else:
        lines.append(f"skipped commits leave it open; the first {result.terms.new} commit is one of: "
                     + ", ".join(c[:9] for c in result.candidates))
    if result.skipped:
        lines.append("skipped: " + "; ".join(f"{r.short} ({r.reason})" for r in result.skipped))
    return lines


def write_bisect(out: Path, result, meta: dict[str, Any]) -> dict[str, Path]:
    rows = sorted(result.rows, key=lambda r: meta.get("order", {}).get(r.commit, 0))
    view = table(rows)
    summary = bisect_summary(result)
    data = {**meta, "criterion": result.criterion.describe(), "terms": {"old": result.terms.old, "new": result.terms.new},
            "old": result.old.sha, "new": result.new.sha,
            "first": {"commit": result.first.sha, "subject": result.first.subject} if result.first else None,
            "candidates": result.candidates,
            "before": result.before.to_dict() if result.before else None, "after": result.after.to_dict() if result.after else None,
            "skipped": [{"commit": r.commit, "subject": r.subject, "reason": r.reason} for r in result.skipped],
            "rows": [r.to_dict() for r in result.rows], "summary": summary, "git_bisect_log": result.log}
    paths = {"json": out / "bisect.json", "md": out / "bisect.md"}
    paths["json"].write_text(json.dumps(data, indent=1, default=str))
    paths["md"].write_text("\n".join(f"- {s}" for s in summary) + "\n\n" + markdown(view))
    paths["html"] = _html(out, "bisect", f"bisect {result.old.short}..{result.new.short}", view, meta, summary)
    return paths
