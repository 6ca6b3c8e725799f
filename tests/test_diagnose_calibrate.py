"""Calibration: floors from harmless perturbations, reproducible, and used by the verdicts."""

from __future__ import annotations

import pytest

from parity.capture import Capture, StageKey
from parity.compare import compare_captures
from parity.diagnose.calibrate import Floors, calibrate
from parity.errors import UserError


@pytest.fixture
def run(tiny_checkpoint):
    from reference.runner import ReferenceRunner

    return lambda request: ReferenceRunner(tiny_checkpoint).run(request)


def test_floors_are_reproducible_and_explain_a_bf16_kernel_change(small_case, run, tmp_path):
    first = calibrate(small_case, run, tmp_path / "one", log=lambda _m: None)
    second = calibrate(small_case, run, tmp_path / "two", log=lambda _m: None)
    assert first.floors == second.floors  # the CPU is deterministic: the band is exact here
    assert first.nondeterministic == []
    assert first.floors["prompt.pad_mask"].rel_l2 == 0 and first.floors["controls.button"].rel_l2 == 0
    assert 0 < first.floors["step.velocity"].rel_l2 < 0.1
    assert first.provenance["floor_from"]["step.velocity"] in ("attention_math", "fp32")
    loaded = Floors.load(tmp_path / "one" / "floors.json")
    assert loaded.floors == first.floors

    # The attention-kernel run fails the plain bf16 tolerance on the cache pass, yet sits within its floor.
    base, math_run = tmp_path / "one" / "base", tmp_path / "one" / "attention_math"
    plain = compare_captures(Capture.open(base), Capture.open(math_run))
    calibrated = compare_captures(Capture.open(base), Capture.open(math_run), small_case.tolerances.with_floors(first.floors))
    assert not plain.passed and calibrated.passed
    stage = next(s for s in calibrated.stages if s.key == StageKey(0, None, "cache_pass.output"))
    assert stage.floor == first.floors["cache_pass.output"] and "x the calibrated floor" in stage.explain()


def test_bad_floors_file(tmp_path):
    path = tmp_path / "floors.json"
    path.write_text('{"schema": "something-else"}')
    with pytest.raises(UserError, match="not a floors file of version 1"):
        Floors.load(path)


def test_compare_with_floors_on_the_command_line(small_case, run, tmp_path, capsys):
    from parity.cli import main

    floors = calibrate(small_case, run, tmp_path / "cal", log=lambda _m: None)
    base, math_run = tmp_path / "cal" / "base", tmp_path / "cal" / "attention_math"
    assert main(["compare", str(base), str(math_run), "--floors", str(tmp_path / "cal" / "floors.json"), "--check"]) == 0
    assert "PARITY" in capsys.readouterr().out
    assert floors.floors["cache_pass.output"].rel_l2 > 0
    (tmp_path / "bad.json").write_text("{}")
    assert main(["compare", str(base), str(math_run), "--floors", str(tmp_path / "bad.json")]) == 2
    assert "not a floors file of version 1" in capsys.readouterr().err
