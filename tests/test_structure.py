"""Structure of the live models (parity.structure) and the config diff in words, on the tiny checkpoint.

A side whose model differs from the other's in one numerics attribute (a norm eps, a head split) must
show exactly that difference, with how it was measured; a side with the same model shows none; a
capture made without structure.json still compares.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F

from parity import structure
from parity.capture import Capture
from parity.compare import compare_captures
from parity.errors import UserError
from reference.runner import ReferenceRunner


def _patched_load(monkeypatch, edit):
    """Every reference run in this test builds its model, then `edit(model)` changes it: a port that
    differs from upstream in one place."""
    original = ReferenceRunner.load

    def load(self, options, device):
        loaded = original(self, options, device)
        edit(loaded.model)
        return loaded

    monkeypatch.setattr(ReferenceRunner, "load", load)


def _differences(result):
    return [f for f in result.structure.findings if f.kind == structure.DIFFERS]


def test_same_model_has_no_structural_difference_and_writes_structure_json(small_case, run_side):
    a = run_side(small_case, name="first")
    b = run_side(small_case, name="second")
    description = json.loads((a / structure.STRUCTURE_FILE).read_text())
    modules = description["components"]["transformer"]["modules"]
    assert modules["blocks.0.norm1"]["attributes"]["norm eps"]["value"] == [1e-6]
    assert modules["blocks.0.cross"]["attributes"]["head size"]["how"].startswith("probed")
    assert description["kv_cache"]["layers"][0] == {"frames kept": 4, "dilation": 2}
    result = compare_captures(Capture.open(a), Capture.open(b))
    assert result.structure.available and result.structure.findings == []


def test_a_norm_eps_changed_in_the_model_is_exactly_the_difference(small_case, run_side, monkeypatch):
    a = run_side(small_case, name="upstream")

    def other_eps(model):
        for m in model.modules():
            if type(m).__name__ == "RMSNorm":
                m.eps = 1e-5

    _patched_load(monkeypatch, other_eps)
    b = run_side(small_case, name="eps", prompt_from=a)
    result = compare_captures(Capture.open(a), Capture.open(b))
    found = _differences(result)
    norms = [n for n in json.loads((a / structure.STRUCTURE_FILE).read_text())["components"]["transformer"]["modules"]
             if n.endswith(("norm1", "norm2", "norm3", "final_norm"))]
    assert sorted(f.where for f in found) == sorted(norms)
    assert {(f.what, f.a, f.b) for f in found} == {("norm eps", "RMSNorm 1e-06", "RMSNorm 1e-05")}
    assert all("probed" in f.how for f in found)
    assert not result.passed  # and the stages see it too


def test_a_head_split_changed_in_the_model_is_exactly_the_difference(small_case, run_side, monkeypatch):
    a = run_side(small_case, name="upstream")

    def other_heads(model):
        for m in model.modules():
            if type(m).__name__ == "CrossAttention":
                m.n_heads, m.head_dim = m.n_heads * 2, m.head_dim // 2

    _patched_load(monkeypatch, other_heads)
    b = run_side(small_case, name="heads", prompt_from=a)
    result = compare_captures(Capture.open(a), Capture.open(b))
    found = _differences(result)
    assert {f.where for f in found} == {f"blocks.{i}.cross" for i in range(4)}
    assert {(f.what, f.a, f.b) for f in found} == {("heads", "4", "8"), ("kv heads", "4", "8"), ("head size", "16", "8")}
    assert all(f.how.startswith("probed: q/k at the attention kernel") for f in found)


def test_capture_without_structure_json_still_compares(small_case, run_side, tmp_path):
    a = run_side(small_case)
    old = tmp_path / "old"
    shutil.copytree(a, old)
    (old / structure.STRUCTURE_FILE).unlink()
    result = compare_captures(Capture.open(a), Capture.open(old))
    assert result.passed
    assert not result.structure.available and "structure.json" in result.structure.note


def test_damaged_structure_json_is_one_line_naming_the_file(small_case, run_side):
    a = run_side(small_case)
    (a / structure.STRUCTURE_FILE).write_text("{not json")
    with pytest.raises(UserError) as err:
        compare_captures(Capture.open(a), Capture.open(a))
    assert str(a / structure.STRUCTURE_FILE) in err.value.one_line()


def test_console_marks_rows_with_symbols_and_never_cuts_values(small_case, run_side):
    from rich.console import Console

    from parity.output import print_result, summary_dict

    a = run_side(small_case, "upstream")
    b = run_side(small_case, "script", prompt_from=a)
    result = compare_captures(Capture.open(a), Capture.open(b))
    console = Console(record=True, no_color=True, width=120)
    print_result(result, console)
    text = console.export_text()
    lines = {line.split("│")[2].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert "≠" in lines["cache mode"] and "◇" in lines["native noise rule"] and "≠" not in lines["noise used"]
    assert "◇" in lines["encoder class"]  # the script's T5 encoder did not run: the prompt was shared
    assert "..." not in text.split("stages")[0]
    assert "structure:" in text or "structure diff" in text
    summary = summary_dict(result)
    rows = {r["field"]: r for r in summary["config_diff"]}
    assert rows["native noise rule"]["kind"] == "designed" and rows["noise used"]["kind"] == "used"
    assert rows["attention kernel"]["a_text"] == "torch SDPA, torch's kernel choice"
    assert summary["structure"]["available"] and summary["structure"]["differences"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-3])
def test_eps_probe_measures_the_eps_a_norm_function_applies(eps, dtype):
    def norm(x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    measured = structure._measure_eps(norm, 16, dtype, structure._ProbeCache(), "k")
    assert abs(measured / eps - 1) < 0.03


def test_eps_probe_reads_torch_defaults_and_rejects_non_norms():
    probes = structure._ProbeCache()
    default = structure._measure_eps(lambda x: F.rms_norm(x, (x.shape[-1],)), 16, torch.float32, probes, "rms")
    assert abs(default / torch.finfo(torch.float32).eps - 1) < 0.03
    layer = structure._measure_eps(lambda x: F.layer_norm(x, (x.shape[-1],), eps=1e-5), 16, torch.float32, probes, "ln")
    assert abs(layer / 1e-5 - 1) < 0.03
    assert structure._measure_eps(lambda x: x * 2, 16, torch.float32, probes, "id") is None


def test_rope_table_rounded_to_bf16_is_designed_other_values_differ():
    table = [[0.123456789, 0.99], [0.5, 0.7071067811]]
    rounded = [[float(torch.tensor(v).to(torch.bfloat16)) for v in row] for row in table]
    shifted = [[v + 0.01 for v in row] for row in table]
    a, b = {"value": rounded, "positions": [[0, 0, 0], [1, 0, 0]]}, {"value": table}
    assert structure._attribute_finding("RoPE table", a, b)[0] == structure.DESIGNED
    assert structure._attribute_finding("RoPE table", {"value": shifted, "positions": [[0, 0, 0], [1, 0, 0]]}, b)[0] == structure.DIFFERS
    assert structure._attribute_finding("RoPE table", b, b)[0] is None


def test_fastvideo_logging_goes_to_a_file_not_the_console(tmp_path, monkeypatch, capsys):
    from parity.fastvideo import logs

    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    monkeypatch.setenv("FASTVIDEO_CONFIGURE_LOGGING", "1")  # a user's own setting is kept
    logger = logging.getLogger("fastvideo")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        logs.quiet()
        logging.getLogger("fastvideo.platforms").error("NPU detection failed: planted")
        path = logs.write_to(tmp_path)
        logging.getLogger("fastvideo.x").info("after the run folder exists")
        captured = capsys.readouterr()
        assert "NPU" not in captured.out + captured.err
        text = path.read_text()
        assert "NPU detection failed: planted" in text and "after the run folder exists" in text
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved
        logs._COLLECTOR.path = None


def test_verbose_flag_keeps_fastvideo_logging(monkeypatch):
    from parity.cli import build_parser
    from parity.fastvideo import logs

    args = build_parser().parse_args(["run", "case.toml", "-o", "x", "--verbose"])
    assert args.verbose
    assert build_parser().parse_args(["--verbose", "compare", "a", "b"]).verbose
    assert not build_parser().parse_args(["compare", "a", "b"]).verbose
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    assert logs.verbose() and logs.write_to("/nonexistent") is None


def test_structure_json_without_its_tables_is_one_line_naming_the_file(small_case, run_side):
    a = run_side(small_case)
    path = a / structure.STRUCTURE_FILE
    data = json.loads(path.read_text())
    del data["components"]["transformer"]["parameters"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        compare_captures(Capture.open(a), Capture.open(a))
    assert "transformer" in err.value.one_line() and str(path) in err.value.one_line()


def test_a_component_that_could_not_be_described_is_noted_not_fatal():
    class Broken(torch.nn.Module):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("planted")

    desc = structure.describe({"transformer": Broken()})
    assert desc["components"] == {} and "planted" in desc["notes"][0]
    other = structure.describe({"transformer": torch.nn.Linear(2, 2)})
    found = structure.diff(desc, other).findings
    assert [f.kind for f in found] == [structure.INFO, structure.INFO]
