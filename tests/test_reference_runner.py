"""The reference runner on the tiny checkpoint: determinism, cache history, profiles, planted bugs."""

from __future__ import annotations

import json

import pytest
import torch

from parity.capture import Capture, StageKey
from parity.compare import FAIL, MISSING_B, compare_captures


def manifest_hashes(run_dir):
    tensors = json.loads((run_dir / "manifest.json").read_text())["tensors"]
    return {k: v["sha256"] for k, v in tensors.items()}


def test_run_compared_with_itself_passes_with_zero_error(small_case, run_side):
    a = run_side(small_case)
    result = compare_captures(Capture.open(a), Capture.open(a))
    assert result.passed
    assert result.first_divergence is None
    assert all(s.metrics.max_abs == 0.0 and s.metrics.rel_l2 == 0.0 for s in result.stages)
    # prompt (+ native) + per frame: controls, native noise, noise, 4 steps of sigma/timestamp/input/velocity/update,
    # latent, cache pass sigma/timestamp/input/output, KV frames/keys/values of 4 layers, decoded
    assert len(result.stages) == 4 + 3 * (3 + 1 + 1 + 4 * 5 + 1 + 4 + 3 * 4 + 1)


def test_two_runs_of_the_same_case_are_bitwise_identical(small_case, run_side):
    a = run_side(small_case, name="first")
    b = run_side(small_case, name="second")
    assert manifest_hashes(a) == manifest_hashes(b)
    for f in range(3):
        assert (a / "frames" / f"{f:06d}.safetensors").read_bytes() == (b / "frames" / f"{f:06d}.safetensors").read_bytes()


def test_upstream_protocol_values(small_case, run_side):
    cap = Capture.open(run_side(small_case))
    sigmas = [float(cap.tensor(StageKey(0, i, "step.sigma"))) for i in range(4)]
    assert sigmas == [1.0, 0.859375, 0.73046875, 0.3203125]  # bf16-rounded config schedule
    assert cap.protocol["sigmas"] == [1.0, 0.859375, 0.73046875, 0.3203125, 0.0]
    x0 = cap.tensor(StageKey(1, 0, "step.input"))
    v0 = cap.tensor(StageKey(1, 0, "step.velocity"))
    x1 = cap.tensor(StageKey(1, 0, "step.update"))
    assert x0.dtype == v0.dtype == x1.dtype == torch.bfloat16
    step = torch.tensor(0.859375, dtype=torch.bfloat16) - torch.tensor(1.0, dtype=torch.bfloat16)
    assert torch.equal(x1, x0 + step * v0)
    assert torch.equal(cap.tensor(StageKey(1, None, "cache_pass.input")), cap.tensor(StageKey(1, None, "latent")))
    button = cap.tensor(StageKey(0, None, "controls.button"))
    assert button.shape == (1, 1, 256) and button[0, 0, 17] == 1 and button.sum() == 1
    mask = cap.tensor(StageKey(None, None, "prompt.pad_mask"))
    emb = cap.tensor(StageKey(None, None, "prompt.embedding"))
    assert mask.dtype == torch.bool and mask.shape == (1, 512) and 0 < int((~mask).sum()) < 20
    assert torch.all(emb[0][mask[0]] == 0) and torch.any(emb[0][~mask[0]] != 0)
    decoded = cap.tensor(StageKey(0, None, "decoded"))
    assert decoded.dtype == torch.uint8 and decoded.shape == (180, 320, 3)


def test_cache_history_changes_later_frames_only(small_case, run_side):
    ring = Capture.open(run_side(small_case, name="ring"))
    alone = Capture.open(run_side(small_case, name="alone", options={"cache_mode": "none", "cache_pass": False}))
    v = StageKey(0, 0, "step.velocity")
    assert torch.equal(ring.tensor(v), alone.tensor(v))  # frame 0 has no history either way
    v1 = StageKey(1, 0, "step.velocity")
    assert not torch.equal(ring.tensor(v1), alone.tensor(v1))


def test_upstream_vs_script_names_the_differences_and_frame_1(small_case, run_side):
    a = run_side(small_case, "upstream")
    b = run_side(small_case, "script", prompt_from=a)
    result = compare_captures(Capture.open(a), Capture.open(b))
    differing = {row.field: (row.a, row.b) for row in result.config if row.differs}
    assert differing["cache mode"] == ("ring", "none")
    assert differing["cache pass"] == (True, False)
    assert differing["encoder class"] == ("UMT5EncoderModel", "T5EncoderModel")
    assert differing["decode input dtype"] == ("bfloat16", "float32")
    assert "noise used" not in differing  # shared noise: both sides used the harness's draw
    # ...but each side's own draw follows its own known rule: a protocol difference, not a failure
    native = next(r for r in result.config if r.field == "native noise rule")
    assert native.differs and native.kind == "designed"
    assert differing["native noise rule"][0].startswith("global") and differing["native noise rule"][1].startswith("per_frame_generator")
    assert all(s.passed for s in result.stages if s.key.family == "noise.native")
    # the script's own prompt encoding (T5EncoderModel, fp32, float mask) differs from upstream's even though
    # both models were given the shared prompt
    assert result.first_divergence.key == StageKey(None, None, "prompt.native_embedding")
    assert next(s for s in result.stages if s.key.family == "prompt.embedding").passed
    first_missing = next(s for s in result.stages if s.status == MISSING_B)
    assert first_missing.key == StageKey(0, None, "cache_pass.sigma")
    assert first_missing.explain() == "frame 0: cache pass missing in B (f0/cache_pass.sigma)"
    assert result.first_divergent_frame == 1
    assert next(s for s in result.stages if s.status == FAIL and s.key.frame is not None).key == StageKey(1, 0, "step.velocity")


def test_native_noise_names_the_noise_rule_and_parts_at_frame_1(write_case, run_side):
    from parity.case import load_case

    from tests.conftest import SMALL_CASE

    case = load_case(write_case(SMALL_CASE + '[alignment]\nnoise = "native"\n', "native"))
    a = run_side(case, "upstream")
    b = run_side(case, "script", prompt_from=a)
    result = compare_captures(Capture.open(a), Capture.open(b))
    rule = next(r for r in result.config if r.field == "noise used")
    assert rule.differs and rule.kind == "used" and "global RNG" in rule.a and "seed + frame" in rule.b
    # On one device, manual_seed(42) then the global RNG draws what Generator().manual_seed(42 + 0)
    # draws: frame 0 agrees, and the rules part from frame 1 on.
    assert next(s for s in result.stages if s.key == StageKey(0, None, "noise")).passed
    assert next(s for s in result.stages if s.status == FAIL and s.key.frame is not None).key == StageKey(1, None, "noise")


def test_planted_sigma_change_is_the_first_divergence(small_case, run_side):
    a = run_side(small_case, "upstream")
    b = run_side(small_case, "upstream", name="planted", options={"sigmas": [1.0, 0.8609585762023926, 0.6, 0.3205108940601349, 0.0]})
    result = compare_captures(Capture.open(a), Capture.open(b))
    # sigma[2] is first used as s_next of step 1, so the update of step 1 is where values part.
    assert result.first_divergence.key == StageKey(0, 1, "step.update")
    sigma_rows = next(r for r in result.config if r.field == "sigmas")
    assert sigma_rows.a[2] == 0.73046875 and sigma_rows.b[2] == 0.6015625


def test_three_step_schedule_reports_the_missing_fourth_step(small_case, run_side):
    a = run_side(small_case, "upstream")
    b = run_side(small_case, "upstream", name="three", options={"sigmas": [1.0, 0.949, 0.840, 0.0]})
    result = compare_captures(Capture.open(a), Capture.open(b))
    steps = next(r for r in result.config if r.field == "steps")
    assert (steps.a, steps.b) == (4, 3)
    missing = [s.key for s in result.stages if s.status == MISSING_B]
    assert StageKey(0, 3, "step.velocity") in missing
    assert result.first_divergence.key == StageKey(0, 0, "step.update")


def test_fp32_model_option_runs_in_fp32(small_case, run_side):
    cap = Capture.open(run_side(small_case, options={"model_dtype": "float32", "noise_dtype": "float32", "sigma_dtype": "float32", "vae_dtype": "float32"}))
    assert cap.tensor(StageKey(0, 0, "step.velocity")).dtype == torch.float32
    assert float(cap.tensor(StageKey(0, 1, "step.sigma"))) == pytest.approx(0.8609585762023926)


def test_world_engine_setup_needs_world_engine_code_and_bf16(tiny_checkpoint, small_case, tmp_path):
    from parity.errors import UserError
    from parity.runner import RunRequest
    from reference.options import resolve_options
    from reference.runner import ReferenceRunner

    with pytest.raises(UserError, match="needs model_dtype and sigma_dtype bfloat16"):
        resolve_options("upstream", {"world_engine_setup": "patches", "model_dtype": "float32"})
    with pytest.raises(UserError, match="leave 'compile_mode' at none"):
        resolve_options("upstream", {"world_engine_setup": "inference", "compile_mode": "default"})
    with pytest.raises(UserError, match="needs --code-source world_engine"):
        ReferenceRunner(tiny_checkpoint).run(RunRequest(small_case, "upstream", tmp_path / "x", "cpu", {"world_engine_setup": "patches"}))
    assert not (tmp_path / "x").exists()


def test_the_config_diff_shows_each_sides_inference_setup(small_case, run_side):
    a = Capture.open(run_side(small_case, "upstream", "a"))
    b = Capture.open(run_side(small_case, "upstream", "b", options={"sdpa_backend": "math"}))
    assert a.manifest["setup"]["summary"] == "snapshot code; compile none; attention torch SDPA (default)"
    row = next(r for r in compare_captures(a, b).config if r.field == "inference setup")
    assert row.differs and row.b.endswith("attention torch SDPA (math)")
