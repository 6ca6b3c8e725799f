"""Module drill-down of a FastVideo capture against upstream (world_engine code), on the tiny
real-architecture checkpoint. Marked `fastvideo`: needs world_engine (WORLD_ENGINE_SRC) and the
FastVideo trees; each FastVideo tree runs in its own process (one process imports one fastvideo).

    FASTVIDEO_SRC=/path/fv-head FASTVIDEO_SRC_640E=/path/fv-640e WORLD_ENGINE_SRC=/path/world_engine/src \\
        python -m pytest tests/test_fastvideo_drilldown.py -m fastvideo

Measured (docs/fastvideo.md, "Drill-down"): 640e654f3 in bf16 diverges first at the noise-level MLP's
first layer (`denoise_step_emb.mlp.fc1`, FastVideo `fc_in`, rel_l2 0.35): it runs the noise MLP in
bf16 where upstream keeps it in fp32. The PR head reports nothing beyond the floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import fastvideo_tree_or_skip, world_engine_or_skip

pytestmark = pytest.mark.fastvideo

CASE = """
    prompt = "A first-person gameplay video exploring a stylized world."
    seed = 42
    frames = 2
    [controls]
    buttons = [17]
    mouse = [0.1, -0.05]
"""
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def upstream_bf16(tmp_path_factory):
    world_engine_or_skip()
    from parity.case import load_case
    from parity.runner import RunRequest
    from parity.tiny.waypoint_arch import make_waypoint_checkpoint
    from reference.runner import ReferenceRunner

    root = tmp_path_factory.mktemp("drill")
    ckpt = make_waypoint_checkpoint(root / "ckpt", seed=0)
    case_file = root / "case.toml"
    case_file.write_text(textwrap.dedent(CASE))
    a = ReferenceRunner(ckpt["snapshot"], code_source="world_engine").run(
        RunRequest(load_case(case_file), "upstream", root / "up-bf16", "cpu", {}))
    return {"root": root, "ckpt": ckpt, "case": case_file, "a": a}


def _fastvideo_drill(tree: str, up: dict, name: str, stage: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTVIDEO_SRC=tree)
    b = up["root"] / f"fv-{name}"
    run = [sys.executable, "-m", "parity", "run", str(up["case"]), "--side", "fastvideo", "--device", "cpu",
           "--snapshot", str(up["ckpt"]["snapshot"]), "--fastvideo-bundle", str(up["ckpt"]["bundle"]),
           "--prompt-from", str(up["a"]), "-o", str(b), "--option", "precision=bf16"]
    proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = up["root"] / f"drill-{name}.json"
    drill = [sys.executable, "-m", "parity", "drill", str(up["a"]), str(b), "--stage", stage, "--device", "cpu", "--json", str(out)]
    proc = subprocess.run(drill, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_640e_bf16_first_divergent_submodule_is_the_noise_mlp(upstream_bf16):
    tree = fastvideo_tree_or_skip("FASTVIDEO_SRC_640E")
    result = _fastvideo_drill(tree, upstream_bf16, "640e", "f0/step0.velocity")
    first = result["first_divergent_module"]
    assert (first["a"], first["b"], first["matched_by"]) == ("denoise_step_emb.mlp.fc1", "denoise_step_emb.mlp.fc_in", "name map")
    assert first["rel_l2"] > 0.1
    # everything before it in execution order is the same computation on the same input
    assert result["modules"][0]["a"] == "denoise_step_emb.mlp.fc1"
    ctrl = next(m for m in result["modules"] if m["a"] == "ctrl_emb")
    assert ctrl["rel_l2"] == 0
    assert result["unmatched_a"] == []


def test_pr_head_bf16_reports_nothing_beyond_the_floor(upstream_bf16):
    tree = fastvideo_tree_or_skip("FASTVIDEO_SRC")
    if not (Path(tree) / "fastvideo" / "pipelines" / "stages" / "waypoint_stages.py").is_file():
        pytest.skip("FASTVIDEO_SRC is not the PR head (no waypoint_stages.py)")
    result = _fastvideo_drill(tree, upstream_bf16, "head", "f1/step1.velocity")
    # bf16 op-order rounding puts single modules at 0.7-1.1x the 1e-2 floor (measured); a real
    # difference is >= 0.3 (640e654f3). Allow 3x, the bf16 velocity tolerance of test_fastvideo.py.
    assert all(m["rel_l2"] <= 3 * m["floor"] for m in result["modules"]), result["first_divergent_module"]
    assert next(m for m in result["modules"] if m["a"] == "denoise_step_emb")["rel_l2"] < 1e-5
    assert result["calls_per_side"] == 2  # the frame-0 cache pass replayed, then the call
    assert result["unmatched_a"] == []
