"""Teacher forcing: a perturbation planted at one frame and step is local there, cumulative after."""

from __future__ import annotations

import shutil

import pytest

from parity.capture import Capture, StageKey
from parity.compare import compare_captures
from parity.diagnose.teacher import error_growth

PLANT = """

_unplanted_forward = WorldModel.forward


def _planted_forward(self, *args, **kwargs):
    v = _unplanted_forward(self, *args, **kwargs)
    frame = int(kwargs["frame_timestamp"].reshape(-1)[0])
    sigma = float(torch.as_tensor(kwargs["sigma"]).float().reshape(-1)[0])
    if frame == {frame} and sigma == {sigma}:
        v = v * 1.05  # planted: 5% too much velocity at one frame and step
    return v


WorldModel.forward = _planted_forward
"""


@pytest.fixture
def planted_snapshot(tiny_checkpoint, tmp_path):
    def make(frame: int, sigma: float):
        copy = tmp_path / f"planted-{frame}-{sigma}"
        shutil.copytree(tiny_checkpoint, copy)
        with open(copy / "transformer" / "model.py", "a") as fh:
            fh.write(PLANT.format(frame=frame, sigma=sigma))
        return copy

    return make


@pytest.fixture
def five_frames(write_case):
    from parity.case import load_case

    return load_case(write_case('prompt = "a walk in the forest"\nseed = 3\nframes = 5\n[controls]\nbuttons = [17]\n', "five"))


def run(case, snapshot, out, teacher=None, prompt_from=None):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    return ReferenceRunner(snapshot, trust_remote_code=True).run(RunRequest(case, "upstream", out, "cpu", prompt_from=prompt_from, teacher=teacher))


def test_planted_perturbation_is_local_at_its_step_and_cumulative_after(five_frames, tiny_checkpoint, planted_snapshot, tmp_path):
    a = run(five_frames, tiny_checkpoint, tmp_path / "a")
    planted = planted_snapshot(frame=2, sigma=0.859375)  # step 1 of the bf16 schedule
    free = run(five_frames, planted, tmp_path / "free", prompt_from=a)
    forced = run(five_frames, planted, tmp_path / "forced", teacher=a, prompt_from=a)

    local = compare_captures(Capture.open(a), Capture.open(forced))
    nonzero_local = {s.key for s in local.stages if s.metrics and s.metrics.max_abs > 0}
    assert nonzero_local == {StageKey(2, 1, "step.velocity"), StageKey(2, 1, "step.update")}

    cumulative = compare_captures(Capture.open(a), Capture.open(free))
    planted_at = StageKey(2, 1, "step.velocity").order
    for s in cumulative.stages:
        if s.key.family not in ("step.update", "latent") or s.metrics is None:
            continue
        if s.key.order < planted_at:
            assert s.metrics.max_abs == 0, s.key
        else:
            assert s.metrics.rel_l2 > 0, s.key
    assert cumulative.first_value_divergence.key == StageKey(2, 1, "step.velocity")

    growth = error_growth(local, cumulative)
    by_frame = {g.frame: g for g in growth.frames}
    assert by_frame[1].local == by_frame[1].cumulative == 0
    assert by_frame[2].local > 0 and by_frame[3].local == 0 and by_frame[3].cumulative > 0
    assert growth.verdict in ("compounds across frames", "grows within frames, bounded across frames", "bounded")


def test_teacher_forced_self_run_is_identical(five_frames, tiny_checkpoint, tmp_path):
    a = run(five_frames, tiny_checkpoint, tmp_path / "a")
    forced = run(five_frames, tiny_checkpoint, tmp_path / "forced", teacher=a, prompt_from=a)
    result = compare_captures(Capture.open(a), Capture.open(forced))
    assert result.passed and all(s.metrics.max_abs == 0 for s in result.stages)
    assert Capture.open(forced).manifest["teacher_forced"]["steps"] == 4
