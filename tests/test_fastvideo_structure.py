"""Structural diff of FastVideo's live model against world_engine's, on the tiny real-architecture
checkpoint. Marked `fastvideo`: needs world_engine (WORLD_ENGINE_SRC) and the FastVideo trees; each
FastVideo run is its own process (one process imports one fastvideo).

    FASTVIDEO_SRC=/path/fv-head FASTVIDEO_SRC_640E=/path/fv-640e WORLD_ENGINE_SRC=/path/world_engine \\
        python -m pytest tests/test_fastvideo_structure.py -m fastvideo

- PR head: no difference that changes numerics; the designed ones are listed as designed (FastVideo's
  VAE in fp32; in bf16 world_engine's RoPE tables hold bf16-rounded values, FastVideo computes them
  in fp32), and FastVideo's import-time log lines stay off the console.
- 640e654f3: its `rms_norm` eps 1e-6 (upstream: the dtype epsilon of F.rms_norm) at every block, attention,
  cross-attention and the output norm; in bf16 also its noise-level MLP in bf16 (upstream keeps fp32).
- PR head with a planted cross-attention head size of 32, a planted rms_norm eps, a temporal RoPE
  spectrum 1% off (bf16), or a local window one frame short: exactly that.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parity import structure
from parity.capture import Capture
from parity.compare import compare_captures
from tests.conftest import fastvideo_tree_or_skip

pytestmark = pytest.mark.fastvideo

CASE = """
    prompt = "A first-person gameplay video exploring a stylized world."
    seed = 42
    frames = 1
    [controls]
    buttons = [17]
"""
ROOT = Path(__file__).resolve().parent.parent
FP32 = ("model_dtype", "noise_dtype", "sigma_dtype", "vae_dtype", "encoder_dtype")

PLANTS = {
    # FastVideo's real classes, patched in the child process before the run (never edited on disk)
    "cross_head_32": "import fastvideo.models.dits.waypoint_transformer as wt\n"
                     "init = wt.CrossAttention.__init__\n"
                     "wt.CrossAttention.__init__ = lambda self, d, c, head_dim=64: init(self, d, c, 32)\n",
    "rms_eps_1e-5": "import torch.nn.functional as F\n"
                    "import fastvideo.models.dits.waypoint_transformer as wt\n"
                    "wt.rms_norm = lambda x, eps=None: F.rms_norm(x, (x.size(-1),), eps=1e-5 if eps is None else eps)\n",
    "local_window_minus_1": "import copy\n"
                            "import fastvideo.models.dits.waypoint_transformer as wt\n"
                            "init = wt.WaypointKVCache.__init__\n"
                            "def shorter(self, config, batch_size, dtype):\n"
                            "    config = copy.copy(config)\n"
                            "    config.local_window -= 1\n"
                            "    init(self, config, batch_size, dtype)\n"
                            "wt.WaypointKVCache.__init__ = shorter\n",
    "rope_time_1pct": "import fastvideo.models.dits.waypoint_transformer as wt\n"
                      "lang = wt._lang_frequencies\n"
                      "wt._lang_frequencies = lambda dim, device: lang(dim, device) * 1.01\n",
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    from reference.world_engine_code import world_engine_status

    ok, why = world_engine_status()
    if not ok:
        pytest.skip(why)
    from parity.case import load_case
    from parity.runner import RunRequest
    from parity.tiny.waypoint_arch import make_waypoint_checkpoint
    from reference.runner import ReferenceRunner

    root = tmp_path_factory.mktemp("structure")
    ckpt = make_waypoint_checkpoint(root / "ckpt", seed=0)
    case_file = root / "case.toml"
    case_file.write_text(textwrap.dedent(CASE))
    runner = ReferenceRunner(ckpt["snapshot"], code_source="world_engine")
    runs = {"bf16": runner.run(RunRequest(load_case(case_file), "upstream", root / "up-bf16", "cpu", {})),
            "fp32": runner.run(RunRequest(load_case(case_file), "upstream", root / "up-fp32", "cpu",
                                          {k: "float32" for k in FP32}))}
    return {"root": root, "ckpt": ckpt, "case": case_file, "runs": runs}


def _fastvideo(tree: str, up: dict, precision: str, plant: str | None = None):
    """(capture folder, console text) of a FastVideo run in its own process."""
    out = up["root"] / f"fv-{Path(tree).name}-{precision}-{plant or 'clean'}"
    argv = ["run", str(up["case"]), "--side", "fastvideo", "--device", "cpu", "--snapshot", str(up["ckpt"]["snapshot"]),
            "--fastvideo-bundle", str(up["ckpt"]["bundle"]), "--prompt-from", str(up["runs"][precision]), "-o", str(out),
            "--option", f"precision={precision}"]
    setup = "from parity.fastvideo import import_fastvideo\nimport_fastvideo()\n"  # FASTVIDEO_SRC on sys.path, logs quiet
    code = (setup + PLANTS[plant] if plant else "") + f"from parity.cli import main\nraise SystemExit(main({argv!r}))\n"
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTVIDEO_SRC=tree)
    env.pop("FASTVIDEO_CONFIGURE_LOGGING", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def _diff(up: dict, precision: str, b) -> structure.StructureDiff:
    result = compare_captures(Capture.open(up["runs"][precision]), Capture.open(b))
    assert result.structure.available, result.structure.note
    return result.structure


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_pr_head_has_no_unexplained_structural_difference(upstream, precision):
    tree = fastvideo_tree_or_skip("FASTVIDEO_SRC")
    b, console = _fastvideo(tree, upstream, precision)
    diff = _diff(upstream, precision, b)
    assert diff.differences == [], [f.line() for f in diff.differences]
    designed = {(f.component, f.what) for f in diff.findings if f.kind == structure.DESIGNED}
    if precision == "bf16":
        assert designed == {("vae", "dtype"), ("transformer", "RoPE table")}
    else:
        assert designed == set()
    # FastVideo's own log lines (platform detection: "NPU detection failed" on a CPU, "CUDA is available"
    # on a GPU) go to the run's fastvideo.log, not the console
    assert "fastvideo.platforms" in (b / "fastvideo.log").read_text()
    assert "fastvideo.platforms" not in console and "NPU detection failed" not in console


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_640e_shows_its_rms_norm_eps(upstream, precision):
    tree = fastvideo_tree_or_skip("FASTVIDEO_SRC_640E")
    b, _ = _fastvideo(tree, upstream, precision)
    diff = _diff(upstream, precision, b)
    eps = [f for f in diff.differences if f.what == "norm eps"]
    assert eps and all("1.19e-07" in f.a and "1e-06" in f.b and "1.19e-07" not in f.b for f in eps)
    where = {f.where for f in eps}
    assert {"out_norm", "transformer.blocks.0", "transformer.blocks.0.attn", "transformer.blocks.0.prompt_cross_attn"} <= where
    others = {(f.where, f.what) for f in diff.differences if f.what != "norm eps"}
    assert others == ({("denoise_step_emb", "dtype")} if precision == "bf16" else set())


@pytest.mark.parametrize("plant, precision", [("cross_head_32", "fp32"), ("rms_eps_1e-5", "fp32"), ("rope_time_1pct", "bf16"),
                                              ("local_window_minus_1", "fp32")])
def test_planted_structural_bug_in_the_pr_head_is_exactly_the_difference(upstream, plant, precision):
    tree = fastvideo_tree_or_skip("FASTVIDEO_SRC")
    b, _ = _fastvideo(tree, upstream, precision, plant)
    found = _diff(upstream, precision, b).differences
    if plant == "cross_head_32":  # not visible in the config: the split measured at the attention kernel
        assert {(f.what, f.a, f.b) for f in found} == {("heads", "2", "4"), ("kv heads", "2", "4"), ("head size", "64", "32")}
        assert {f.where for f in found} == {"transformer.blocks.0.prompt_cross_attn", "transformer.blocks.3.prompt_cross_attn"}
    elif plant == "rms_eps_1e-5":  # a function default, no attribute anywhere
        assert found and {f.what for f in found} == {"norm eps"}
        assert all("1e-05" in f.b for f in found)
    elif plant == "rope_time_1pct":  # in bf16, and still not mistaken for world_engine's bf16-rounded tables
        assert [(f.where, f.what) for f in found] == [("transformer.blocks.0.attn.rope", "RoPE table")]
    else:  # local layers 1 and 3 keep 2 frames upstream
        assert [(f.label, f.what, f.a, f.b) for f in found] == [("kv_cache layer 1", "frames kept", "2", "1"),
                                                                 ("kv_cache layer 3", "frames kept", "2", "1")]
