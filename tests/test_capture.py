"""The capture format: stage keys and order, atomic frame files, validation on read."""

from __future__ import annotations

import json

import pytest
import torch

from parity.capture import Capture, CaptureWriter, StageKey
from parity.errors import UserError


def test_stage_order_is_execution_order():
    keys = [
        StageKey(1, None, "decoded"), StageKey(1, 0, "step.velocity"), StageKey(0, None, "cache_pass.output"),
        StageKey(None, None, "prompt.embedding"), StageKey(1, None, "noise"), StageKey(1, 1, "step.sigma"),
        StageKey(1, 0, "step.update"), StageKey(1, None, "latent"), StageKey(1, None, "controls.mouse"),
    ]
    ordered = [k.id for k in sorted(keys, key=lambda k: k.order)]
    assert ordered == [
        "prompt.embedding", "f0/cache_pass.output", "f1/controls.mouse", "f1/noise", "f1/step0.velocity",
        "f1/step0.update", "f1/step1.sigma", "f1/latent", "f1/decoded",
    ]
    assert StageKey.from_id("f3/step2.velocity") == StageKey(3, 2, "step.velocity")


def write_capture(path, frames=2):
    w = CaptureWriter(path, {"side": "test"})
    w.record_prompt(torch.ones(1, 4, 2), torch.tensor([[False, False, True, True]]))
    for f in range(frames):
        with w.frame(f) as rec:
            rec["noise"] = torch.full((1, 1, 2, 2, 2), float(f), dtype=torch.bfloat16)
    return w


def test_round_trip_and_incomplete_marker(tmp_path):
    w = write_capture(tmp_path / "run")
    cap = Capture.open(tmp_path / "run")
    assert not cap.complete and cap.manifest["frames_written"] == 2
    assert torch.equal(cap.tensor(StageKey(1, None, "noise")), torch.ones(1, 1, 2, 2, 2, dtype=torch.bfloat16))
    info = cap.info(StageKey(1, None, "noise"))
    assert info["dtype"] == "bfloat16" and info["stats"]["mean"] == 1.0
    w.close()
    assert Capture.open(tmp_path / "run").complete
    assert not list((tmp_path / "run").rglob(".*.tmp"))


def test_frame_that_raises_is_not_written(tmp_path):
    w = write_capture(tmp_path / "run", frames=1)
    with pytest.raises(RuntimeError):
        with w.frame(1) as rec:
            rec["noise"] = torch.zeros(1)
            raise RuntimeError("killed mid-frame")
    cap = Capture.open(tmp_path / "run")
    assert cap.manifest["frames_written"] == 1 and not (tmp_path / "run" / "frames" / "000001.safetensors").exists()


def test_writer_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="run folder already exists and is not empty"):
        CaptureWriter(tmp_path / "run", {})
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_other_schema_version_is_rejected(tmp_path):
    write_capture(tmp_path / "run").close()
    manifest = tmp_path / "run" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        Capture.open(tmp_path / "run")
    assert err.value.one_line() == f"{manifest}: capture schema version 99 is not supported (this harness reads versions 1, 2); re-run the capture"


def test_corrupt_frame_file_is_named(tmp_path):
    write_capture(tmp_path / "run").close()
    frame = tmp_path / "run" / "frames" / "000001.safetensors"
    frame.write_bytes(frame.read_bytes()[:40])
    cap = Capture.open(tmp_path / "run")
    with pytest.raises(UserError) as err:
        cap.tensor(StageKey(1, None, "noise"))
    assert err.value.one_line().startswith(f"{frame}: cannot read tensors")


def test_tampered_tensor_fails_its_hash(tmp_path):
    from safetensors.torch import save_file

    write_capture(tmp_path / "run").close()
    frame = tmp_path / "run" / "frames" / "000000.safetensors"
    save_file({"noise": torch.full((1, 1, 2, 2, 2), 7.0, dtype=torch.bfloat16)}, str(frame))
    with pytest.raises(UserError, match="does not match its recorded sha256; the capture is corrupt"):
        Capture.open(tmp_path / "run").tensor(StageKey(0, None, "noise"))


def test_sampled_capture_keeps_every_kth_frames_steps_and_compares_as_not_sampled(small_case, run_side):
    from parity.compare import NOT_SAMPLED, compare_captures
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    full = run_side(small_case, name="full")
    sampled_dir = full.parent / "sampled"
    ReferenceRunner(json.loads((full / "manifest.json").read_text())["model"]["snapshot"]).run(
        RunRequest(small_case, "upstream", sampled_dir, capture="every:2"))
    sampled = Capture.open(sampled_dir)
    assert sampled.manifest["capture"] == {"mode": "every", "every": 2, "sampled_families": ["step.input", "step.velocity", "step.update"],
                                           "kv": "full"}
    ids = set(sampled.manifest["tensors"])
    assert "f0/step1.velocity" in ids and "f2/step3.update" in ids and "f1/step0.input" not in ids
    assert "f1/latent" in ids and "f1/decoded" in ids and "f1/step0.sigma" in ids
    result = compare_captures(Capture.open(full), sampled)
    assert result.passed
    assert {s.key.id for s in result.stages if s.status == NOT_SAMPLED} == {f"f1/step{i}.{n}" for i in range(4) for n in ("input", "velocity", "update")}


def test_capture_policy_none_is_a_bare_run_and_cannot_be_compared(small_case, run_side, tmp_path):
    from parity.capture import CapturePolicy

    w = CaptureWriter(tmp_path / "bare", {"side": "x"}, policy=CapturePolicy.parse("none"))
    with w.frame(0) as rec:
        rec["noise"] = torch.ones(1)
    w.close()
    assert not list((tmp_path / "bare" / "frames").glob("*.safetensors"))
    with pytest.raises(UserError, match="capture policy none"):
        Capture.open(tmp_path / "bare")
    with pytest.raises(UserError, match="capture policy must be full, none or every:K"):
        CapturePolicy.parse("every:0")


def test_background_writer_writes_the_same_bytes(tmp_path):
    a = CaptureWriter(tmp_path / "fg", {"side": "x"})
    b = CaptureWriter(tmp_path / "bg", {"side": "x"}, background=True)
    for w in (a, b):
        for f in range(5):
            with w.frame(f) as rec:
                rec["noise"] = torch.full((1, 1, 2, 2, 2), float(f), dtype=torch.bfloat16)
        w.close()
    for f in range(5):
        name = f"frames/{f:06d}.safetensors"
        assert (tmp_path / "fg" / name).read_bytes() == (tmp_path / "bg" / name).read_bytes()
    assert Capture.open(tmp_path / "bg").manifest["tensors"] == Capture.open(tmp_path / "fg").manifest["tensors"]
