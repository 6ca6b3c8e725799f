"""Drill-down names the submodule where a planted bug lives, and lists what it could not match."""

from __future__ import annotations

import shutil

import pytest
import torch

from parity.capture import Capture, StageKey
from parity.compare import compare_captures
from parity.diagnose.drilldown import compare_records, drill_down_reference

BUG = """

_unplanted_init = WorldModel.__init__
_unplanted_cross = CrossAttention.forward


def _init_with_bug(self, *args, **kwargs):
    _unplanted_init(self, *args, **kwargs)
    self.blocks[2].cross.planted_bug = True


def _cross_with_bug(self, h, ctx):
    out = _unplanted_cross(self, h, ctx)
    return out * 1.02 if getattr(self, "planted_bug", False) else out


WorldModel.__init__ = _init_with_bug
CrossAttention.forward = _cross_with_bug
"""


def test_bug_planted_in_one_submodule_is_named(tiny_checkpoint, small_case, tmp_path):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    buggy = tmp_path / "buggy"
    shutil.copytree(tiny_checkpoint, buggy)
    with open(buggy / "transformer" / "model.py", "a") as fh:
        fh.write(BUG)
    a = ReferenceRunner(tiny_checkpoint).run(RunRequest(small_case, "upstream", tmp_path / "a"))
    b = ReferenceRunner(buggy, trust_remote_code=True).run(RunRequest(small_case, "upstream", tmp_path / "b", prompt_from=a))
    comparison = compare_captures(Capture.open(a), Capture.open(b))
    first_nonzero = next(s for s in comparison.stages if s.metrics and s.metrics.max_abs > 0)
    assert first_nonzero.key == StageKey(0, 0, "step.velocity")
    # The bug hides inside the bf16 tolerance of the velocity; the sigma=0 cache pass amplifies it.
    assert comparison.first_value_divergence.key == StageKey(0, None, "cache_pass.output")

    for stage in (first_nonzero.key, comparison.first_value_divergence.key):
        result = drill_down_reference(stage, a, b, trust_remote_code=True)
        assert result.first.name_a == "blocks.2.cross" and result.first.matched_by == "name", stage
        earlier = [m for m in result.modules if m.name_a.startswith(("blocks.0.", "blocks.1.", "patch_in", "noise_mlp"))]
        assert earlier and all(m.rel_l2 == 0 for m in earlier)
        assert result.unmatched_a == [] and result.unmatched_b == [] and result.calls == 1


def test_later_frame_rebuilds_the_cache_from_the_reference_trajectory(tiny_checkpoint, small_case, tmp_path):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    a = ReferenceRunner(tiny_checkpoint).run(RunRequest(small_case, "upstream", tmp_path / "a"))
    result = drill_down_reference(StageKey(2, 1, "step.velocity"), a, a)
    assert result.first is None and result.calls == 3
    assert all(m.rel_l2 == 0 for m in result.modules)


def test_renamed_and_unmatched_modules():
    a = [("blocks.0.mlp.fc1", torch.ones(2, 3)), ("blocks.0.mlp.fc2", torch.ones(2)), ("only_a", torch.ones(5, 5))]
    b = [("blocks.0.mlp.fc_in", torch.ones(2, 3)), ("weird_name", torch.full((2,), 2.0)), ("only_b", torch.ones(7))]
    result = compare_records(StageKey(0, 0, "step.velocity"), a, b, calls=1)
    assert [(m.name_a, m.name_b, m.matched_by) for m in result.modules] == [
        ("blocks.0.mlp.fc1", "blocks.0.mlp.fc_in", "name map"),
        ("blocks.0.mlp.fc2", "weird_name", "order+shape"),
    ]
    assert result.first.name_a == "blocks.0.mlp.fc2"
    assert result.unmatched_a == ["only_a"] and result.unmatched_b == ["only_b"]


def test_repeated_module_calls_pair_by_occurrence():
    """A module run several times in one forward (a shared RoPE) pairs k-th call with k-th call."""
    a = [("rope", torch.ones(2)), ("blocks.0.mlp.fc1", torch.ones(3)), ("rope", torch.full((2,), 5.0))]
    b = [("rope", torch.ones(2)), ("blocks.0.mlp.fc_in", torch.ones(3)), ("blocks.0.mlp.act", torch.ones(3)),
         ("rope", torch.full((2,), 5.0))]
    result = compare_records(StageKey(1, 0, "step.velocity"), a, b, calls=2)
    assert [(m.name_a, m.name_b, m.matched_by, m.rel_l2) for m in result.modules] == [
        ("rope", "rope", "name", 0.0), ("blocks.0.mlp.fc1", "blocks.0.mlp.fc_in", "name map", 0.0), ("rope", "rope", "name", 0.0)]
    assert result.first is None and result.unmatched_a == [] and result.unmatched_b == ["blocks.0.mlp.act"]


@pytest.mark.parametrize("text", ["f0/step0.bogus", "nonsense", "f0/noise", "prompt.embedding", "fx/step0.velocity"])
def test_bad_stage_ids_are_one_line_user_errors(text):
    from parity.diagnose.drilldown import parse_stage
    from parity.errors import UserError

    with pytest.raises(UserError) as err:
        parse_stage(text)
    assert "\n" not in err.value.one_line()


def test_drill_command_rejects_a_bad_stage_with_exit_2(tmp_path, capsys):
    from parity.cli import main

    assert main(["drill", str(tmp_path), str(tmp_path), "--stage", "f0/step0.bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad stage id" in err[0]
    assert parse_ok("f3/cache_pass.output") == StageKey(3, None, "cache_pass.output")


def parse_ok(text):
    from parity.diagnose.drilldown import parse_stage

    return parse_stage(text)
