"""Planted bugs on the reference side (no FastVideo needed; runs in CI): A is the upstream profile,
B the same runner with one bug, planted through a protocol option or a run-time patch of the tiny
snapshot's model, KV cache or VAE. The harness's first divergence must be the stage, frame and step
where the bug first acts (derived from the bug and the per-frame protocol).

Both sides run in fp32 on the built-in tiny checkpoint, 2 frames (every bug here acts by frame 1): what bf16 hides is the oracle's
business (tests of parity.oracle); here every bug is far above fp32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import patch_reference_load

FP32 = {"model_dtype": "float32", "noise_dtype": "float32", "sigma_dtype": "float32", "vae_dtype": "float32",
        "encoder_dtype": "float32"}
SCROLL_FRAME = 1
CASE = f"""
    prompt = "A first-person gameplay video exploring a stylized world."
    seed = 42
    frames = 2
    [controls]
    buttons = [17]
    mouse = [0.1, -0.05]
    [[controls.segments]]
    frames = [{SCROLL_FRAME}, 2]
    scroll = -2
    [alignment]
    noise = "{{noise}}"
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    from parity.case import load_case

    root = tmp_path_factory.mktemp("planted-cases")
    out = {}
    for noise in ("shared", "native"):
        path = root / f"{noise}.toml"
        path.write_text(__import__("textwrap").dedent(CASE.format(noise=noise)))
        out[noise] = load_case(path)
    return out


def _run(snapshot, case, out, options):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    return ReferenceRunner(snapshot).run(RunRequest(case, "upstream", out, "cpu", {**FP32, **options}))


@pytest.fixture(scope="module")
def upstream(tiny_checkpoint, cases, tmp_path_factory):
    """upstream(noise) -> the A capture for that noise alignment, made once for the module.

    Both are made here, before any test plants its bug: made lazily inside the first test that asks,
    A would carry that test's bug (it patches every reference load) and the bug would go unseen."""
    root = tmp_path_factory.mktemp("planted-upstream")
    made = {noise: _run(tiny_checkpoint, cases[noise], root / noise, {}) for noise in cases}
    return made.__getitem__


@pytest.fixture
def first_divergence(tiny_checkpoint, cases, upstream, tmp_path):
    """first_divergence(options={}, noise="shared") -> the harness's first divergent StageResult of A vs B."""
    from parity.capture import Capture
    from parity.compare import compare_captures

    def run(options=None, noise="shared", structure=()):
        b = _run(tiny_checkpoint, cases[noise], tmp_path / "b", dict(options or {}))
        result = compare_captures(Capture.open(upstream(noise)), Capture.open(b))
        assert result.first_divergence is not None, "the planted bug was missed"
        if structure:
            # the structural diff of the live models names it before any stage
            diff = getattr(result, "structure", None)
            assert diff is not None and diff.available, "this harness has no structural diff (needs the structure lane)"
            named = {f.what for f in diff.differences}
            assert set(structure) <= named, f"structure should name {structure}, lists {[f.line() for f in diff.differences]}"
        return result.first_divergence

    return run


def _where(stage) -> tuple:
    return stage.key.frame, stage.key.step, stage.key.family


def _kv_where(stage) -> tuple:
    return stage.key.frame, getattr(stage.key, "layer", None), stage.key.family


def test_perturbed_sigma_is_named_at_the_first_update(first_divergence):
    # s1 enters the first update x + (s1 - s0) v; no model call has seen it yet
    stage = first_divergence({"sigmas": [1.0, 0.85, 0.729332447052002, 0.3205108940601349, 0.0]})
    assert _where(stage) == (0, 0, "step.update"), stage.explain()


def test_per_frame_generator_noise_is_named_at_frame_1s_noise(first_divergence):
    # frame 0 draws the same: Generator().manual_seed(seed + 0) is the global RNG after
    # torch.manual_seed(seed); from frame 1 on the streams part
    stage = first_divergence({"noise_rule": "per_frame_generator"}, noise="native")
    assert _where(stage) == (1, None, "noise"), stage.explain()


def test_missing_cache_pass_is_named_at_frame_0(first_divergence):
    from parity.compare import MISSING_B

    stage = first_divergence({"cache_pass": False})
    # missing in every cache-pass stage: the first one the capture schema has is named
    assert stage.key.frame == 0 and stage.key.family.startswith("cache_pass.") and stage.status == MISSING_B, stage.explain()


def test_latent_scale_is_named_at_the_first_decode(first_divergence):
    stage = first_divergence({"latent_scale": 2.0})
    assert _where(stage) == (0, None, "decoded"), stage.explain()


def test_t5_encoder_is_named_at_the_prompt(first_divergence):
    stage = first_divergence({"encoder_class": "t5"})
    assert _where(stage) == (None, None, "prompt.embedding"), stage.explain()


def test_dropped_scroll_sign_is_named_where_scrolling_starts(first_divergence, monkeypatch):
    from parity.case import FrameControls

    original = FrameControls.tensors

    def tensors(self, dtype, device="cpu"):
        out = original(self, dtype, device)
        return {**out, "scroll": out["scroll"].abs()}

    monkeypatch.setattr(FrameControls, "tensors", tensors)
    stage = first_divergence()
    assert _where(stage) == (SCROLL_FRAME, None, "controls.scroll"), stage.explain()


def test_norm_eps_is_named_at_the_first_model_call(first_divergence, monkeypatch):
    def eps_1e2(loaded):
        for module in loaded.model.modules():
            if hasattr(module, "eps"):
                module.eps = 1e-2

    patch_reference_load(monkeypatch, eps_1e2)
    stage = first_divergence(structure=("norm eps",))
    assert _where(stage) == (0, 0, "step.velocity"), stage.explain()


def test_frozen_cache_pass_is_named_at_frame_0s_cache(first_divergence, monkeypatch):
    # nothing is written by frame 0's cache pass; its output is the same (the frame sees itself either way)
    def frozen(loaded):
        class AlwaysFrozen(loaded.cache_class):
            def set_frozen(self, frozen):
                super().set_frozen(True)

        loaded.cache_class = AlwaysFrozen

    patch_reference_load(monkeypatch, frozen)
    stage = first_divergence()
    assert _kv_where(stage) == (0, 0, "kv.frames"), stage.explain()


def test_ignored_dilation_is_named_at_frame_1s_cache(first_divergence, monkeypatch):
    # dilation d keeps frames t % d == 0 in the global rings: frame 1 is the first frame kept by
    # mistake, at its cache pass (frame 2's velocity is the first value it changes)
    def undilated(loaded):
        base = loaded.cache_class

        class Undilated(base):
            def __init__(self, config, batch_size, dtype):
                super().__init__(dict(config, global_pinned_dilation=1), batch_size, dtype)

        loaded.cache_class = Undilated

    patch_reference_load(monkeypatch, undilated)
    stage = first_divergence(structure=("dilation",))
    assert _kv_where(stage) == (1, 0, "kv.frames"), stage.explain()  # layer 0 is the first global layer


class _RoundIsIdentity(torch.Tensor):
    def round(self, *args, **kwargs):
        return self


def test_truncating_vae_is_named_at_the_first_decode(first_divergence, monkeypatch):
    def truncating(loaded):
        vae = loaded.vae
        decode, conv_out = vae.decode, vae.conv_out.forward

        def truncated(z):
            vae.conv_out.forward = lambda x: conv_out(x).as_subclass(_RoundIsIdentity)
            try:
                return decode(z).as_subclass(torch.Tensor)
            finally:
                del vae.conv_out.forward

        vae.decode = truncated

    patch_reference_load(monkeypatch, truncating)
    stage = first_divergence()
    assert _where(stage) == (0, None, "decoded"), stage.explain()
