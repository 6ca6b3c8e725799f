"""Capture size estimate and limits (parity.budget); the command-line errors are in test_bad_inputs."""

from __future__ import annotations

import collections

import pytest

from parity.budget import DISK_MARGIN, budget_limits, check_budget, decoded_shape, estimate_capture, parse_bytes
from parity.errors import UserError


@pytest.mark.parametrize("text, value", [(123, 123), ("123", 123), ("2GB", 2 * 10**9), ("1.5 MB", 1_500_000),
                                         ("2GiB", 2 * 2**30), ("10k", 10_000), ("7 TB", 7 * 10**12)])
def test_parse_bytes(text, value):
    assert parse_bytes(text, "x") == value


@pytest.mark.parametrize("text", ["", "lots", "-5", 0, True, "5 parsecs", 1.5, None])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match=r"^x must be"):
        parse_bytes(text, "x")


def tiny_estimate(frames=8, cache_pass=True):
    return estimate_capture(latent_shape=(1, 1, 16, 32, 32), frames=frames, steps=4, model_dtype="bfloat16",
                            sigma_dtype="bfloat16", cache_pass=cache_pass, prompt_shape=(1, 512, 32), decoded_shape=(180, 320, 3))


def test_estimate_scales_with_frames_and_stages():
    one, two = tiny_estimate(1), tiny_estimate(2)
    assert two.bytes - one.bytes == one.per_frame
    # the cache pass: input and output latents, its sigma and timestamp (4 tensors); no KV bytes given here
    assert tiny_estimate(1).per_frame - tiny_estimate(1, cache_pass=False).per_frame == 2 * 16 * 32 * 32 * 2 + 4 * 600


def test_kv_stages_are_in_the_estimate_and_digests_are_small():
    from parity.kv_view import kv_capture_bytes
    from parity.tiny.checkpoint import TRANSFORMER_CONFIG

    full, digest = kv_capture_bytes(TRANSFORMER_CONFIG, 2, "full"), kv_capture_bytes(TRANSFORMER_CONFIG, 2, "digest")
    assert kv_capture_bytes(TRANSFORMER_CONFIG, 2, "off") == 0 and digest < full / 50
    assert tiny_estimate(1).per_frame + full == estimate_capture(
        latent_shape=(1, 1, 16, 32, 32), frames=1, steps=4, model_dtype="bfloat16", sigma_dtype="bfloat16", cache_pass=True,
        prompt_shape=(1, 512, 32), decoded_shape=(180, 320, 3), kv_bytes=full).per_frame


def test_the_smallest_limit_applies_and_names_its_source(tmp_path):
    limits = budget_limits("5MB", 4_000_000, env={"WAYPOINT_PARITY_MAX_CAPTURE_BYTES": "3MB"})
    assert min(limits) == (3_000_000, "$WAYPOINT_PARITY_MAX_CAPTURE_BYTES")
    with pytest.raises(UserError, match=r"more than the 3.0 MB allowed by \$WAYPOINT_PARITY_MAX_CAPTURE_BYTES"):
        check_budget(tiny_estimate(), tmp_path / "run", limits)
    assert check_budget(tiny_estimate(1), tmp_path / "run", limits).startswith("capture estimate: ")


def test_disk_space_minus_margin(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    est = tiny_estimate()
    monkeypatch.setattr("parity.budget.shutil.disk_usage", lambda p: usage(0, 0, DISK_MARGIN + est.bytes))
    assert "free on" in check_budget(est, tmp_path / "a" / "b", [])
    monkeypatch.setattr("parity.budget.shutil.disk_usage", lambda p: usage(0, 0, DISK_MARGIN + est.bytes - 1))
    with pytest.raises(UserError, match="free some space or choose another --out"):
        check_budget(est, tmp_path / "a" / "b", [])


def test_decoded_shape_from_the_vae_config_or_8x(tiny_checkpoint, tmp_path):
    assert decoded_shape(tiny_checkpoint, (1, 1, 16, 32, 32)) == (180, 320, 3)
    assert decoded_shape(tmp_path, (1, 1, 16, 45, 80)) == (360, 640, 3)
