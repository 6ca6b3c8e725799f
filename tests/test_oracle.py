"""The fp32 oracle rule on the built-in model: a correct, differently rounded bf16 side passes with
no hand-set tolerance; planted bugs below and above bf16 rounding fail at their stage and frame.

B sides are the reference runner in bf16 with another attention kernel (`sdpa_backend = "math"`:
the same math, another summation order), with one bug planted at run time (monkeypatch).
"""

from __future__ import annotations

import json
import shutil

import pytest

from parity.capture import Capture, StageKey
from parity.compare import compare_captures
from tests.conftest import patch_reference_load

CASE = """
    prompt = "A first-person gameplay video exploring a stylized world."
    seed = 42
    frames = 6
    [controls]
    buttons = [17]
    mouse = [0.1, -0.05]
"""
OTHER_KERNEL = {"sdpa_backend": "math"}


def _scale_velocity(factor):
    def patch(loaded):
        fp32_velocity = loaded.model.posterior_velocity  # fp32 inside the model, rounded to bf16 on return
        loaded.model.posterior_velocity = lambda *a, **k: fp32_velocity(*a, **k) * factor
    return patch


def _truncating_vae(loaded):
    import torch

    vae, decode = loaded.vae, loaded.vae.decode

    def truncating(z):
        # same network, but the last step floors instead of rounding: ((y + 1) * 127.5).floor()
        with torch.no_grad(), _floor_instead_of_round():
            return decode(z)

    vae.decode = truncating


class _floor_instead_of_round:
    def __enter__(self):
        import torch

        self._round = torch.Tensor.round
        torch.Tensor.round = torch.Tensor.floor

    def __exit__(self, *exc):
        import torch

        torch.Tensor.round = self._round


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    """A (bf16), its fp32 oracle, and a correct B with another attention kernel."""
    from parity import oracle
    from parity.case import load_case
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    root = tmp_path_factory.mktemp("oracle")
    (root / "case.toml").write_text(__import__("textwrap").dedent(CASE))
    case = load_case(root / "case.toml")
    runner = ReferenceRunner(tiny_checkpoint)
    a = runner.run(RunRequest(case, "upstream", root / "a", "cpu"))
    o = oracle.make_oracle(runner, case, "upstream", a, root / "a.oracle-fp32", "cpu", {})
    b = runner.run(RunRequest(case, "upstream", root / "b", "cpu", dict(OTHER_KERNEL), prompt_from=a))
    return {"case": case, "root": root, "a": a, "o": o, "b": b, "ckpt": tiny_checkpoint}


def _run_b(runs, name, options=None, snapshot=None):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    out = runs["root"] / name
    shutil.rmtree(out, ignore_errors=True)
    runner = ReferenceRunner(snapshot or runs["ckpt"])
    return runner.run(RunRequest(runs["case"], "upstream", out, "cpu", {**OTHER_KERNEL, **(options or {})}, prompt_from=runs["a"]))


def _compare(runs, b, oracle=True):
    return compare_captures(Capture.open(runs["a"]), Capture.open(b), oracle=Capture.open(runs["o"]) if oracle else None)


def _report(result) -> str:
    rows = []
    for f in result.families():
        s = f.largest_oracle_ratio
        if s is not None:
            rows.append(f"{f.family}: max ratio {s.oracle.ratio:.3g} at {s.key.id}")
    return "; ".join(rows)


def test_oracle_manifest_says_what_it_is(runs):
    o = Capture.open(runs["o"])
    assert o.manifest["purpose"]["oracle_of"] == str(runs["a"])
    assert o.protocol["model_dtype"] == "float32" and o.protocol["vae_dtype"] == "float32"
    assert o.protocol["noise_dtype"] == "bfloat16"
    assert o.protocol["sigmas"] == Capture.open(runs["a"]).protocol["sigmas"]  # A's rounded schedule, held in fp32
    assert o.protocol["prompt_source"].startswith("injected from")


def test_oracle_captures_what_a_captured(runs, tmp_path):
    """A sampled capture with KV digests (how real-size runs are captured) gets an oracle of the same
    policy: a full KV view of every frame would be ~0.46 GB a frame at Waypoint-1-Small's size."""
    from parity import oracle
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    a = ReferenceRunner(runs["ckpt"]).run(RunRequest(runs["case"], "upstream", tmp_path / "a", "cpu", capture="every:2,kv:digest"))
    o = Capture.open(oracle.oracle_for(Capture.open(a)))
    assert o.manifest["capture"] == Capture.open(a).manifest["capture"]
    assert {k.id for k in o.keys()} == {k.id for k in Capture.open(a).keys()}
    b = ReferenceRunner(runs["ckpt"]).run(RunRequest(runs["case"], "upstream", tmp_path / "b", "cpu", dict(OTHER_KERNEL),
                                                      prompt_from=a, capture="every:2,kv:digest"))
    result = compare_captures(Capture.open(a), Capture.open(b), oracle=o)
    assert result.passed, result.first_divergence.explain()
    assert any(s.rule == "oracle" and s.key.frame == 2 and s.key.family == "step.velocity" for s in result.stages)


def test_correct_bf16_side_passes_against_the_oracle(runs):
    result = _compare(runs, runs["b"])
    print("correct side:", _report(result))
    assert result.passed, result.first_divergence.explain()
    velocity = [s for s in result.stages if s.key.family == "step.velocity"]
    assert all(s.rule == "oracle" for s in velocity)
    assert all(0.5 < s.oracle.ratio < 2 for s in velocity if s.oracle.err_a > 0)
    assert result.stages[0].rule == "dtype"  # the prompt is an input: the oracle holds A's own
    assert all(s.rule == "exact" for s in result.stages if s.key.family in ("step.sigma", "controls.mouse", "noise"))


def test_velocity_scaled_by_1_001_fails_at_the_first_velocity(runs, monkeypatch):
    patch_reference_load(monkeypatch, _scale_velocity(1.001))
    result = _compare(runs, _run_b(runs, "b-scale"))
    first = result.first_divergence
    print("velocity x1.001:", first.explain())
    assert first.key == StageKey(0, 0, "step.velocity")
    found = first.oracle.systematic
    assert found.component == "gain" and found.mean == pytest.approx(1e-3, rel=0.3) and found.first == "f0/step0.velocity"
    # what a norm alone sees: B is hardly further from the oracle than A
    assert first.oracle.ratio < 1.5


def test_perturbed_sigma_fails_where_it_is_first_used(runs):
    from parity.tiny.checkpoint import SCHEDULER_SIGMAS

    sigmas = list(SCHEDULER_SIGMAS)
    sigmas[1] += 4e-3  # one bf16 ulp at 0.86 is 2^-8 = 3.9e-3
    result = _compare(runs, _run_b(runs, "b-sigma", {"sigmas": sigmas}))
    first = result.first_divergence
    print("perturbed sigma:", first.explain())
    # sigma 1 is first used as step 0's s_next, in its update; then step 1's sigma is exact and wrong
    assert first.key == StageKey(0, 0, "step.update") and "systematic" in first.oracle.failed
    sigma = next(s for s in result.stages if s.key == StageKey(0, 1, "step.sigma"))
    assert sigma.rule == "exact" and not sigma.passed


def test_one_frame_shorter_local_window_fails_where_the_window_matters(runs, tmp_path):
    snapshot = tmp_path / "short-window"
    shutil.copytree(runs["ckpt"], snapshot)
    config_path = snapshot / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    window = config["local_window"]
    config["local_window"] = window - 1
    config_path.write_text(json.dumps(config))
    result = _compare(runs, _run_b(runs, "b-window", snapshot=snapshot))
    first = result.first_divergence
    print(f"local window {window - 1} instead of {window}:", first.explain())
    # the cache pass of frame `window - 1` is the first to drop a frame the window should keep (the
    # KV-cache stage names it, exactly); frame `window` is the first whose values change, judged
    # against the oracle. In the tiny model the transformer's share of the velocity grows as sigma
    # falls, so the last step shows it first.
    assert first.key.frame == window - 1 and first.key.family == "kv.frames"
    velocity = next(s for s in result.stages if s.key.family == "step.velocity" and not s.passed)
    print("first failing velocity:", velocity.explain())
    assert velocity.key.frame == window and "error" in velocity.oracle.failed and velocity.oracle.ratio > 3


def test_truncating_vae_fails_in_fp32_on_its_bias(runs, monkeypatch, tmp_path):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    fp32 = {"model_dtype": "float32", "vae_dtype": "float32", "noise_dtype": "float32", "sigma_dtype": "float32"}
    runner = ReferenceRunner(runs["ckpt"])
    a = runner.run(RunRequest(runs["case"], "upstream", tmp_path / "a32", "cpu", dict(fp32)))
    b_ok = runner.run(RunRequest(runs["case"], "upstream", tmp_path / "b32", "cpu", {**fp32, **OTHER_KERNEL}, prompt_from=a))
    patch_reference_load(monkeypatch, _truncating_vae)
    b_bad = runner.run(RunRequest(runs["case"], "upstream", tmp_path / "b32-trunc", "cpu", dict(fp32), prompt_from=a))
    ok = compare_captures(Capture.open(a), Capture.open(b_ok))
    decoded_ok = [s for s in ok.stages if s.key.family == "decoded"]
    assert all(s.passed for s in decoded_ok), [s.explain() for s in decoded_ok if not s.passed]
    bad = compare_captures(Capture.open(a), Capture.open(b_bad))
    first = bad.first_divergence
    print("truncating VAE (fp32):", first.explain())
    assert first.key == StageKey(0, None, "decoded") and first.rule == "dtype"
    assert first.metrics.bias == pytest.approx(-0.5, abs=0.1) and "beyond rounding noise" in first.explain()


def test_truncating_vae_fails_in_bf16_against_the_oracle(runs, monkeypatch):
    patch_reference_load(monkeypatch, _truncating_vae)
    result = _compare(runs, _run_b(runs, "b-trunc"))
    decoded = [s for s in result.stages if s.key.family == "decoded"]
    print("truncating VAE (bf16):", decoded[0].explain())
    assert result.first_divergence.key == StageKey(0, None, "decoded")
    found = decoded[0].oracle.systematic
    assert found.component == "bias" and found.mean == pytest.approx(-0.5, abs=0.1)


def test_console_names_first_failing_and_largest_apart(runs, monkeypatch):
    from rich.console import Console

    from parity.output import print_result

    patch_reference_load(monkeypatch, _scale_velocity(1.001))
    result = _compare(runs, _run_b(runs, "b-scale-console"))
    console = Console(record=True, width=250)
    print_result(result, console)
    text = console.export_text()
    assert "first failing stage" in text and "largest error (B vs A)" in text and "against the fp32 oracle" in text
    row = next(line for line in text.splitlines() if line.startswith("│ step.velocity "))
    fam = next(f for f in result.families() if f.family == "step.velocity")
    assert fam.first_failing.key.id == "f0/step0.velocity" and "f0/step0.velocity: systematic gain" in row
    assert f"{fam.largest.key.id}: rel_l2" in row
