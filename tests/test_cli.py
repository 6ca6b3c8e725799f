"""The command line: happy paths end to end, and bad inputs as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parity.cli import main
from tests.conftest import SMALL_CASE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def case_file(write_case):
    return write_case(SMALL_CASE, "small")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_then_compare(tiny_checkpoint, case_file, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(capsys, "run", case_file, "--snapshot", tiny_checkpoint, "-o", a, "--device", "cpu")[0] == 0
    code, out, _ = run_cli(capsys, "run", case_file, "--side", "script", "--snapshot", tiny_checkpoint, "--prompt-from", a,
                           "-o", b, "--device", "cpu", "--option", "noise_dtype=bfloat16")
    assert code == 0 and f"capture written: {b}" in out
    code, out, _ = run_cli(capsys, "compare", a, b, "-o", tmp_path / "cmp", "--check")
    assert code == 1
    assert "first divergence: frame 0, cache_pass.input: present on one side only (missing in B)" in out
    assert out.strip().splitlines()[-1].startswith("DIVERGED | ")
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert summary["first_divergent_frame"] == 1 and summary["verdict"] == "FAIL"
    assert summary["test_model"] is True
    code, out, _ = run_cli(capsys, "compare", a, a, "--check")
    assert code == 0 and out.strip().splitlines()[-1].startswith("PARITY | ")


def test_module_entry_point_shows_help():
    proc = subprocess.run([sys.executable, "-m", "parity", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "waypoint-parity parity" in proc.stdout


def untrusted_copy(tiny_checkpoint, tmp_path):
    copy = tmp_path / "snap"
    shutil.copytree(tiny_checkpoint, copy)
    with open(copy / "transformer" / "model.py", "a") as fh:
        fh.write("\n# edited\n")
    return copy


def extra_weight_copy(tiny_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "snap"
    shutil.copytree(tiny_checkpoint, copy)
    path = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["blocks.9.extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    return copy


def missing_file_copy(tiny_checkpoint, tmp_path):
    copy = tmp_path / "snap"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / "before_denoise.py").unlink()
    return copy


def no_sigmas_copy(tiny_checkpoint, tmp_path):
    copy = tmp_path / "snap"
    shutil.copytree(tiny_checkpoint, copy)
    cfg = json.loads((copy / "transformer" / "config.json").read_text())
    cfg["scheduler_sigmas"] = [1.0, 0.3, 0.7, 0.0]
    (copy / "transformer" / "config.json").write_text(json.dumps(cfg))
    return copy


BAD_SNAPSHOTS = [
    (lambda ck, tmp: tmp / "nowhere", "{snap}: snapshot folder not found (and it is not an Org/Name repo id)"),
    (lambda ck, tmp: "Nobody/Nothing", "is not in the Hugging Face cache"),
    (untrusted_copy, "{snap}: snapshot code is not trusted"),
    (extra_weight_copy, "{snap}/transformer: transformer weights do not load strictly: 1 unexpected (blocks.9.extra.weight)"),
    (missing_file_copy, "{snap}: incomplete snapshot: before_denoise.py is missing"),
    (no_sigmas_copy, "{snap}/transformer/config.json: scheduler_sigmas must be strictly descending"),
]


@pytest.mark.parametrize("make, message", BAD_SNAPSHOTS, ids=["missing", "not-cached", "untrusted", "non-strict", "incomplete", "unsorted-sigmas"])
def test_bad_snapshot_is_one_line_exit_2_nothing_written(make, message, tiny_checkpoint, case_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("WAYPOINT_PARITY_TRUST_REMOTE_CODE", raising=False)
    snap = make(tiny_checkpoint, tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", case_file, "--snapshot", snap, "-o", out, "--device", "cpu")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("waypoint-parity: error: ")
    assert message.format(snap=snap) in err
    assert not out.exists()


def test_untrusted_snapshot_runs_with_explicit_trust(tiny_checkpoint, case_file, tmp_path, capsys):
    snap = untrusted_copy(tiny_checkpoint, tmp_path)
    out = tmp_path / "out"
    assert run_cli(capsys, "run", case_file, "--snapshot", snap, "--trust-remote-code", "-o", out, "--device", "cpu")[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["code_trust"] == "--trust-remote-code" and manifest["model"]["test_model"] is False


def test_script_profile_loads_non_strict_and_records_it(tiny_checkpoint, case_file, tmp_path, capsys):
    snap = extra_weight_copy(tiny_checkpoint, tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", case_file, "--side", "script", "--snapshot", snap, "--trust-remote-code", "-o", out, "--device", "cpu")
    assert code == 0, err
    report = json.loads((out / "manifest.json").read_text())["model"]["load_report"]
    assert report == {"strict": False, "missing": [], "unexpected": ["blocks.9.extra.weight"], "mismatched": []}


def test_bad_arguments_and_captures(tiny_checkpoint, case_file, tmp_path, capsys):
    a = tmp_path / "a"
    assert run_cli(capsys, "run", case_file, "--snapshot", tiny_checkpoint, "-o", a, "--device", "cpu")[0] == 0
    manifest_before = (a / "manifest.json").read_bytes()

    code, _, err = run_cli(capsys, "run", case_file, "--snapshot", tiny_checkpoint, "-o", a, "--device", "cpu")
    assert code == 2 and f"{a}: run folder already exists and is not empty" in err
    assert (a / "manifest.json").read_bytes() == manifest_before

    code, _, err = run_cli(capsys, "run", case_file, "--snapshot", tiny_checkpoint, "-o", tmp_path / "x", "--option", "warp=1")
    assert code == 2 and "unknown option 'warp'" in err and not (tmp_path / "x").exists()

    code, _, err = run_cli(capsys, "run", tmp_path / "nope.toml", "-o", tmp_path / "y")
    assert code == 2 and err == f"waypoint-parity: error: {tmp_path / 'nope.toml'}: case file not found\n"

    old = tmp_path / "old"
    shutil.copytree(a, old)
    data = json.loads((old / "manifest.json").read_text())
    data["schema_version"] = 0
    (old / "manifest.json").write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "compare", a, old)
    assert code == 2 and "capture schema version 0 is not supported" in err

    code, _, err = run_cli(capsys, "compare", a, tmp_path)
    assert code == 2 and f"{tmp_path}: not a capture: manifest.json is missing" in err

    corrupt = tmp_path / "corrupt"
    shutil.copytree(a, corrupt)
    (corrupt / "frames" / "000002.safetensors").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "compare", a, corrupt)
    assert code == 2 and f"{corrupt / 'frames' / '000002.safetensors'}: cannot read tensors" in err


def test_parity_command_writes_captures_summaries_and_index(tiny_checkpoint, write_case, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "one.toml").write_text(SMALL_CASE.replace("frames = 3", "frames = 2"))
    code, out, _ = run_cli(capsys, "parity", cases, "--snapshot", tiny_checkpoint, "--out-root", tmp_path / "reports", "--device", "cpu")
    assert code == 0
    (run,) = (tmp_path / "reports").iterdir()
    index = json.loads((run / "index.json").read_text())
    (entry,) = index["comparisons"]
    assert entry["case"] == "one" and entry["pair"] == "upstream-vs-script" and entry["first_divergent_frame"] == 1
    assert (run / entry["summary"]).is_file() and (run / "one" / "upstream__vs__script@upstream" / "stages.csv").is_file()
    assert (run / entry["captures"]["a"] / "manifest.json").is_file()
    assert any("FastVideo side skipped" in n for n in index["notes"]) or "fastvideo" in json.dumps(index)
    assert "DIVERGED: 0 of 1 comparisons within tolerance" in out


def test_parity_skips_the_fastvideo_pair_with_the_reason_when_no_bundle_is_given(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """FastVideo importable (FASTVIDEO_SRC set) but no bundle: the pair is skipped and says why, the
    upstream-vs-script pair still runs and the index is written."""
    import parity.fastvideo

    monkeypatch.setattr(parity.fastvideo, "fastvideo_status", lambda: (True, "a FastVideo tree (stages pipeline)"))
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "one.toml").write_text(SMALL_CASE.replace("frames = 3", "frames = 2"))
    code, out, _ = run_cli(capsys, "parity", cases, "--snapshot", tiny_checkpoint, "--out-root", tmp_path / "reports", "--device", "cpu")
    assert code == 0
    (run,) = (tmp_path / "reports").iterdir()
    index = json.loads((run / "index.json").read_text())
    assert [e["pair"] for e in index["comparisons"]] == ["upstream-vs-script"]
    assert any("FastVideo side skipped: no FastVideo-layout bundle was given" in n for n in index["notes"])
    assert "pass --fastvideo-bundle" in out
