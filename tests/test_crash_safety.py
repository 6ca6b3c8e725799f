"""A run killed mid-frame: the finished frames survive, compare and summary.json mark the capture
incomplete, and `run --resume` continues it to a capture bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parity.capture import Capture
from parity.cli import main
from parity.verify import verify_capture
from tests.snapshot_copies import HOOK_ENV, hooked_copy

REPO = Path(__file__).resolve().parents[1]

NATIVE_CASE = """
prompt = "A first-person gameplay video exploring a stylized world."
seed = 7
frames = 4
[alignment]
noise = "native"
[controls]
buttons = [17]
[[controls.segments]]
frames = [2, 4]
mouse = [0.25, -0.5]
"""


@pytest.fixture(scope="module")
def killed(tiny_checkpoint, tmp_path_factory):
    """(snapshot, case, killed run folder, uninterrupted run folder): the kill happens in frame 2, step 1."""
    root = tmp_path_factory.mktemp("crash")
    snap = hooked_copy(tiny_checkpoint, root / "snap")
    case = root / "native.toml"
    case.write_text(NATIVE_CASE)
    run = root / "killed"
    env = {**os.environ, HOOK_ENV: "kill@2:2", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "parity", "run", str(case), "--snapshot", str(snap), "--trust-remote-code",
                           "-o", str(run), "--device", "cpu"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    full = root / "full"
    assert main(["run", str(case), "--snapshot", str(snap), "--trust-remote-code", "-o", str(full), "--device", "cpu"]) == 0
    return snap, case, run, full


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_killed_run_keeps_every_finished_frame(killed):
    _, _, run, _ = killed
    cap = Capture.open(run)
    assert not cap.complete and cap.manifest["frames_written"] == 2
    assert {k.frame for k in cap.keys()} == {None, 0, 1}
    assert verify_capture(cap).endswith("(INCOMPLETE, 2 frames)")
    assert not (run / "frames" / "000002.safetensors").exists()


def test_compare_and_summary_mark_the_killed_capture_incomplete(killed, tmp_path, capsys):
    _, _, run, full = killed
    before = tree_bytes(run)
    assert main(["compare", str(full), str(run), "-o", str(tmp_path / "cmp"), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"capture {run} is incomplete: 2 frames written" in out.replace("\n", "")
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert summary["b"]["complete"] is False and summary["a"]["complete"] is True and summary["verdict"] == "FAIL"
    assert summary["first_divergence"]["explanation"] == "frame 2 missing in B (f2/controls.mouse)"
    assert summary["first_value_divergence"] is None  # the finished frames are identical
    assert tree_bytes(run) == before


def test_resume_gives_the_uninterrupted_capture_bitwise(killed, tmp_path, capsys):
    import shutil

    snap, case, run, full = killed
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    (resumed / "frames" / ".000002.safetensors.tmp").write_bytes(b"half a frame")  # what a kill mid-write leaves
    assert main(["run", str(case), "--snapshot", str(snap), "--trust-remote-code", "-o", str(resumed), "--device", "cpu", "--resume"]) == 0
    got, want = json.loads((resumed / "manifest.json").read_text()), json.loads((full / "manifest.json").read_text())
    assert got["complete"] is True and got["frames_written"] == 4 and got["resumed"][0]["frames_before"] == 2
    assert got["tensors"] == want["tensors"]  # every sha256, shape, dtype and stat
    a, b = tree_bytes(resumed), tree_bytes(full)
    assert {k: v for k, v in a.items() if k != "manifest.json"} == {k: v for k, v in b.items() if k != "manifest.json"}
    assert main(["compare", str(full), str(resumed), "--check"]) == 0


def test_resume_refuses_other_inputs_and_replays_that_do_not_match(killed, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from parity.capture import tensor_info

    snap, case, run, _ = killed
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = tree_bytes(copy)
    base = ["run", str(case), "--snapshot", str(snap), "--trust-remote-code", "-o", str(copy), "--device", "cpu", "--resume"]

    assert main(base + ["--option", "noise_dtype=float32"]) == 2
    assert capsys.readouterr().err == (f"waypoint-parity: error: {copy}: cannot resume: options.noise_dtype: \"float32\" now, "
                                       "\"bfloat16\" in the capture; resume with the same inputs or start a new capture\n")
    assert tree_bytes(copy) == before

    # Frame 0's noise replaced, manifest hash updated: the capture verifies, but the replay cannot reproduce it.
    frame = copy / "frames" / "000000.safetensors"
    state = load_file(frame)
    state["noise"] = torch.zeros_like(state["noise"])
    save_file(state, str(frame))
    sidecar = copy / "frames" / "000000.json"  # an unfinished run's tensor table lives in the frame sidecars
    entry = json.loads(sidecar.read_text())
    entry["tensors"]["f0/noise"]["sha256"] = tensor_info(state["noise"], "").sha256
    sidecar.write_text(json.dumps(entry))
    before = tree_bytes(copy)
    assert main(base) == 2
    assert capsys.readouterr().err == (f"waypoint-parity: error: {copy}: cannot resume: replaying frame 0 does not reproduce "
                                       "f0/noise bitwise (other device, library version or thread count than the interrupted "
                                       "run?); start a new capture\n")
    assert tree_bytes(copy) == before


def test_resume_without_a_capture_starts_one(tiny_checkpoint, write_case, tmp_path):
    from tests.conftest import SMALL_CASE

    out = tmp_path / "fresh"
    assert main(["run", str(write_case(SMALL_CASE)), "--snapshot", str(tiny_checkpoint), "-o", str(out), "--device", "cpu", "--resume"]) == 0
    assert Capture.open(out).complete and "resumed" not in Capture.open(out).manifest


def test_model_failure_keeps_finished_frames_and_records_the_error(tiny_checkpoint, write_case, tmp_path, monkeypatch, capsys):
    from tests.conftest import SMALL_CASE

    snap = hooked_copy(tiny_checkpoint, tmp_path / "snap")
    monkeypatch.setenv(HOOK_ENV, "nan@1:2")
    out = tmp_path / "run"
    assert main(["run", str(write_case(SMALL_CASE)), "--snapshot", str(snap), "--trust-remote-code", "-o", str(out), "--device", "cpu"]) == 2
    line = (f"{out}: frame 1, step 1, step.velocity: the model produced 2 NaN/Inf values, first at channel 3, y 4, x 5 (nan); "
            "frame 0 is kept, the capture is marked incomplete")
    assert capsys.readouterr().err == f"waypoint-parity: error: {line}\n"
    cap = Capture.open(out)
    assert not cap.complete and cap.manifest["frames_written"] == 1 and cap.manifest["error"] == line
    assert verify_capture(cap).endswith("(INCOMPLETE, 1 frames)")
