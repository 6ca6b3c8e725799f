"""One run folder from many: the index of a parallel run, and `waypoint-parity merge OUT DIR...`.

A run folder (see `parity.suite`) holds `index.json`, `index.html` and one folder per case. Runs
that were split, over the workers of one machine or over the machines of a CI matrix (`--shard`),
end as one folder with one index:

- parallel workers share one run folder; each appends its finished comparisons to
  `.parity-parts/<worker>.jsonl` (`append_part`), and the controller turns the parts into
  `index.json` and `index.html` (`finish_parts`);
- `merge_runs(out, sources)` copies (hard-links where the file system allows) every case folder of
  every source run into `out` and writes the combined `index.json` and `index.html`.

Rows are ordered by case name, then in the order each run wrote them (pairs in case order), so a
merged or parallel index equals the index of the same cases run one after another (`make parity`
orders cases by file name, which is the case name unless a case sets `name`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from parity.errors import UserError

INDEX_JSON = "index.json"
PARTS = ".parity-parts"


# ---- parts of a parallel run --------------------------------------------------------------------


def append_part(out_root: Path, worker: str, entry: dict[str, Any]) -> None:
    """Records one finished comparison of `worker`; one JSON line, written whole and flushed."""
    folder = Path(out_root) / PARTS
    folder.mkdir(exist_ok=True)
    with open(folder / f"{worker}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()


def finish_parts(out_root: Path, notes: list[str]) -> tuple[Path, Path] | None:
    """Merges every worker's part into index.json and index.html; None when no worker wrote one."""
    folder = Path(out_root) / PARTS
    if not folder.is_dir():
        return None
    entries = []
    for part in sorted(folder.glob("*.jsonl")):
        entries.extend(json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line.strip())
    paths = write_run(out_root, entries, notes)
    shutil.rmtree(folder)
    return paths


# ---- index of a run folder ----------------------------------------------------------------------


def write_run(out_root: Path, entries: list[dict[str, Any]], notes: list[str]) -> tuple[Path, Path]:
    """index.json and index.html of a run folder from index.json rows (see `parity.suite.index_entry`)."""
    from parity.report import write_run_index
    from parity.suite import write_index_entries

    out_root = Path(out_root)
    entries = sorted(entries, key=lambda e: e["case"])  # stable: pairs keep their order within a case
    index = write_index_entries(out_root, entries, notes)
    html = write_run_index(out_root, [_run_index_entry(out_root, e) for e in entries], notes)
    return index, html


def _run_index_entry(out_root: Path, e: dict[str, Any]) -> dict[str, Any]:
    """What `parity.report.write_run_index` reads of a comparison, taken from index.json and
    summary.json instead of comparing the captures again."""
    summary_path = out_root / e["summary"]
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    report = summary_path.parent / "index.html"
    return {"case": e["case"], "pair": e["pair"], "result": _IndexedResult(e, bool(summary.get("test_model"))),
            "report": report if report.is_file() else summary_path}


class _Explained:
    def __init__(self, text: str):
        self.text = text

    def explain(self) -> str:
        return self.text


class _Side:
    def __init__(self, test_model: bool):
        self.manifest = {"model": {"test_model": test_model}}


class _IndexedResult:
    """The fields of a ComparisonResult that the run index shows, from one index.json row."""

    def __init__(self, e: dict[str, Any], test_model: bool):
        self.passed = e["verdict"] == "PASS"
        self.first_divergence = _Explained(e["first_divergence"]) if e.get("first_divergence") else None
        self.first_value_divergence = _Explained(e["first_value_divergence"]) if e.get("first_value_divergence") else None
        self.first_divergent_frame = e.get("first_divergent_frame")
        self.a = self.b = _Side(test_model)


# ---- merging run folders ------------------------------------------------------------------------


def read_index(run: Path) -> dict[str, Any]:
    path = Path(run) / INDEX_JSON
    if not path.is_file():
        raise UserError("not a parity run folder: no index.json (the folder `make parity` or `pytest --parity` writes)", run)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("comparisons"), list):
            raise ValueError("no comparisons list")
        for e in data["comparisons"]:
            for key in ("case", "pair", "verdict", "summary"):
                if not isinstance(e.get(key), str):
                    raise ValueError(f"a comparison without {key!r}")
    except (ValueError, AttributeError) as exc:
        raise UserError(f"not a valid run index: {exc}", path) from None
    return data


def merge_runs(out: Path, sources: list[Path]) -> tuple[Path, Path]:
    """Copies every case folder of `sources` into the new run folder `out` (hard links where
    possible) and writes one index.json and index.html. `out` must not exist or be empty; a case
    found in two sources is an error. Nothing is written before every source is checked."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("exists and is not empty; merge writes a new run folder", out)
    indexes = [read_index(src) for src in sources]
    owner: dict[str, Path] = {}
    for src, data in zip(sources, indexes):
        for case in dict.fromkeys(e["case"] for e in data["comparisons"]):
            if case in owner:
                raise UserError(f"case {case!r} is in both {owner[case]} and {src}; merge takes each case from one run", src)
            if not (Path(src) / case).is_dir():
                raise UserError(f"index.json lists case {case!r} but its folder is missing", src)
            owner[case] = Path(src)
    out.mkdir(parents=True, exist_ok=True)
    entries, notes = [], []
    for src, data in zip(sources, indexes):
        src = Path(src)
        for case in dict.fromkeys(e["case"] for e in data["comparisons"]):
            shutil.copytree(src / case, out / case, copy_function=_link_or_copy)
            _repoint_summaries(out / case, src.resolve(), out.resolve())
        entries.extend(data["comparisons"])
        notes.extend(n for n in data.get("notes", []) if n not in notes)
    return write_run(out, entries, notes)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _repoint_summaries(case_dir: Path, src_root: Path, out_root: Path) -> None:
    """summary.json names its captures by absolute path; point those under the source run at the
    merged copy (written as a new file: the old one may be a hard link into the source run)."""
    for summary_path in case_dir.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        changed = False
        for side in ("a", "b"):
            capture = Path((summary.get(side) or {}).get("capture", ""))
            try:
                rel = capture.resolve().relative_to(src_root)
            except ValueError:
                continue
            summary[side]["capture"] = str(out_root / rel)
            changed = True
        if changed:
            summary_path.unlink()
            summary_path.write_text(json.dumps(summary, indent=1))
