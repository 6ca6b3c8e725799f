"""Helpers for the many-workers and shard tests: tiny two-frame cases, run-folder fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SMALL_CASE

TWO_CASES = {
    "alpha": SMALL_CASE.replace("frames = 3", "frames = 2"),
    "beta": SMALL_CASE.replace("frames = 3", "frames = 2").replace("seed = 42", "seed = 7"),
}


def write_cases(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TWO_CASES.items():
        (folder / f"{name}.toml").write_text(text)
    return folder


def fingerprint(run: Path) -> dict:
    """What must not depend on how a run was split: per comparison the verdict and first divergences,
    per capture the sha256 of every tensor."""
    index = json.loads((run / "index.json").read_text())
    comparisons = {(e["case"], e["pair"]): {k: e[k] for k in ("verdict", "first_divergence", "first_value_divergence",
                                                             "first_divergent_frame", "summary", "captures")}
                   for e in index["comparisons"]}
    captures = {}
    for manifest in sorted(run.glob("*/captures/*/manifest.json")):
        m = json.loads(manifest.read_text())
        assert m["complete"]
        captures[str(manifest.parent.relative_to(run))] = {k: t["sha256"] for k, t in m["tensors"].items()}
    return {"comparisons": comparisons, "captures": captures}


def devices(run: Path) -> set[str]:
    return {json.loads(m.read_text())["device"] for m in run.glob("*/captures/*/manifest.json")}
