"""Porting bugs planted in FastVideo's real Waypoint code at run time: does the harness name each one
at the stage, frame and step where it first acts?

Each test monkeypatches one thing in FastVideo (a function, a method, a module attribute; the tree is
never edited), runs FastVideo's own pipeline through the harness on a tiny checkpoint of the real
architecture in fp32 on the CPU, compares with upstream (world_engine's code, same checkpoint) and
asserts the harness's FIRST divergence. The expected location is derived from the bug and the
per-frame protocol (noise, denoise steps with the cache frozen, cache pass, decode), never read off
what the harness prints: see `expected` of each bug below. The unpatched port must pass with the
default tolerances, on every checkpoint and over three seeds.

Two checkpoints of the real architecture: the one `make-checkpoint --arch waypoint` writes, and
another one shaped independently (layer count, windows, dilation, global-layer offset, conditioning
periods, GQA ratio, weight seed), since the harness is judged on checkpoints it did not make.
Head size stays 64 in both (FastVideo hard-codes it; see docs/fastvideo.md).

Needs FastVideo (FASTVIDEO_SRC) and world_engine (WORLD_ENGINE_SRC); otherwise every test skips and
says why. FastVideo runs in this process (one tree per process), so run this file on its own, e.g.

    FASTVIDEO_SRC=/path/fv-head WORLD_ENGINE_SRC=/path/world_engine \\
        python -m pytest tests/test_planted_fastvideo.py -m fastvideo -n 0
"""

from __future__ import annotations

import builtins
import copy
import functools
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import fastvideo_requirements
import torch

pytestmark = pytest.mark.fastvideo

FP32_UPSTREAM = {"model_dtype": "float32", "noise_dtype": "float32", "sigma_dtype": "float32",
                 "vae_dtype": "float32", "encoder_dtype": "float32"}
FP32_FASTVIDEO = {"precision": "fp32", "vae_precision": "fp32"}
SEEDS = (42, 7, 1234)
PROMPT = "A first-person gameplay video exploring a stylized world."
FRAMES = 4
"""Enough for every bug below to act (the latest acts at frame 2), except those that set their own."""

SCROLL_FRAME = 2
"""Frames 0-1: button 17, mouse (0.1, -0.05), no scroll; from frame 2: buttons 17 + 30, mouse
(0.5, 0.2), scroll -3 (upstream feeds its sign, -1)."""
CASE = f"""
    prompt = "{{prompt}}"
    seed = {{seed}}
    frames = {{frames}}
    [controls]
    buttons = [17]
    mouse = [0.1, -0.05]
    [[controls.segments]]
    frames = [{SCROLL_FRAME}, 4]
    mouse = [0.5, 0.2]
    scroll = -3
    buttons = [17, 30]
"""

OTHER_ARCH = {
    # independent of make-checkpoint's: 6 layers, global layers 1 and 4 (offset 1, period 3) with a
    # 6-frame window at dilation 3, local window 3, 3 query heads on 1 KV head (d_model 192, head 64),
    # prompt cross-attention and control fusion every 2nd layer, MLP ratio 3
    "d_model": 192, "n_heads": 3, "n_kv_heads": 1, "n_layers": 6, "mlp_ratio": 3,
    "local_window": 3, "global_window": 6, "global_attn_period": 3, "global_pinned_dilation": 3,
    "global_attn_offset": 1, "ctrl_conditioning_period": 2, "prompt_conditioning_period": 2,
}
CHECKPOINTS = {"made": ({}, 0), "other": (OTHER_ARCH, 11)}
"""name -> (changes to make-checkpoint's transformer config, weight seed)."""


# -- stage names for the stages issue 14 adds (capture schema 2), in one place ----------------------
TIMESTAMP_FAMILIES = ("step.timestamp",)
NATIVE_NOISE_FAMILIES = ("noise.native",)
NATIVE_PROMPT_FAMILIES = ("prompt.native_embedding",)
CACHE_PASS_FAMILIES = ("cache_pass.sigma", "cache_pass.timestamp", "cache_pass.input", "cache_pass.output")
"""A missing cache pass is missing in every one of its stages: the first the schema has is named."""
KV_FAMILIES = ("kv.frames",)
"""After a cache pass, per layer: which frames the layer can attend to (then their keys and values)."""


@dataclass(frozen=True)
class Where:
    """Where a bug first acts: the frame (None: once per run), the denoise step (None: not a step
    stage) and the stage families that name it (the first of them the harness reaches)."""

    frame: int | None
    step: int | None
    families: tuple[str, ...]
    missing_in_b: bool = False
    layer: int | None = None
    """For the per-layer KV stages: the first layer (in order) whose cache goes wrong."""

    def matches(self, stage) -> bool:
        """`step` binds per-step families (`step.*`) only: a per-frame family (a frame's timestamp
        recorded once) names the same call with step None."""
        from parity.compare import MISSING_B

        step = self.step if stage.key.family.startswith("step.") else None
        return (stage.key.frame == self.frame and stage.key.step == step and stage.key.family in self.families
                and getattr(stage.key, "layer", None) == self.layer and (not self.missing_in_b or stage.status == MISSING_B))

    def __str__(self) -> str:
        parts = [] if self.frame is None else [f"frame {self.frame}"]
        if self.step is not None:
            parts.append(f"step {self.step}")
        if self.layer is not None:
            parts.append(f"layer {self.layer}")
        return ", ".join(parts + ["|".join(self.families)]) + (" (missing in B)" if self.missing_in_b else "")


@dataclass(frozen=True)
class Bug:
    name: str
    plant: Callable
    """plant(monkeypatch, fv) with fv the FastVideo modules (`FV` below)."""
    expected: Callable[[dict], Where]
    """expected(transformer config) -> where the bug first acts."""
    needs: str
    """The harness feature (and lane) that must exist for the expected location to be reachable."""
    frames: Callable[[dict], int] = lambda config: FRAMES
    """How many frames the case needs for the bug to act, from the transformer config."""
    structure: tuple[str, ...] = ()
    """What the structural diff of the two live models must list as differing (its `what` words),
    before any stage: a number the module tree carries (eps, head size, window, dilation)."""


class FV:
    """FastVideo's Waypoint modules, imported from FASTVIDEO_SRC."""

    def __init__(self):
        import fastvideo.configs.pipelines.waypoint as pipeline_config
        import fastvideo.models.dits.waypoint_transformer as transformer
        import fastvideo.models.vaes.world_engine_vae as vae
        import fastvideo.pipelines.stages.waypoint_stages as stages

        self.stages, self.transformer, self.vae, self.pipeline_config = stages, transformer, vae, pipeline_config


# -- planting tools: each wraps FastVideo's own callable and changes one thing ------------------------
class _TorchWith:
    """Stands in for the `torch` a FastVideo module sees: everything is torch's, except `overrides`."""

    def __init__(self, **overrides):
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(torch, name)


def _wrap_controls(monkeypatch, fv, change):
    """The denoising stage's control preparation, with `change(keyboard, mouse, scroll)` applied to its result."""
    stage = fv.stages.WaypointDenoisingStage
    original = stage.__dict__["_controls"].__func__

    @functools.wraps(original)
    def controls(*args, **kwargs):
        return change(*original(*args, **kwargs))

    monkeypatch.setattr(stage, "_controls", staticmethod(controls))


def _wrap_cache_pass(monkeypatch, fv, around):
    """The stage's `_cache_pass`, run inside `around(stage)` (a context manager)."""
    stage = fv.stages.WaypointDenoisingStage
    original = stage._cache_pass

    @functools.wraps(original)
    def cache_pass(self, *args, **kwargs):
        with around(self):
            return original(self, *args, **kwargs)

    monkeypatch.setattr(stage, "_cache_pass", cache_pass)


class _CallWith:
    """Stands in for the transformer at a call site: `change(kwargs)` first, then the real module
    (so the harness's hooks on it see what the port really passed)."""

    def __init__(self, module, change):
        self.module, self.change = module, change

    def __call__(self, **kwargs):
        return self.module(**self.change(kwargs))

    def __getattr__(self, name):
        return getattr(self.module, name)


def _wrap_method(monkeypatch, cls, name, around):
    """`cls.name`, run inside `around(self)` (a context manager)."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        with around(self):
            return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, method)


def _cache_with(monkeypatch, fv, **changes):
    """`WaypointKVCache` built from a copy of the model config with `changes` (what a port gets wrong
    when it reads a window or a dilation from the wrong place)."""
    cls = fv.transformer.WaypointKVCache
    original = cls.__init__

    @functools.wraps(original)  # the signature stays FastVideo's: the structural diff builds the cache from it
    def init(self, config, *args, **kwargs):
        config = copy.copy(config)
        for key, value in changes.items():
            setattr(config, key, value(getattr(config, key)))
        original(self, config, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)


class _RoundIsIdentity(torch.Tensor):
    """A decoder output whose `.round()` does nothing, so the uint8 cast that follows truncates."""

    def round(self, *args, **kwargs):
        return self


class _MaskProductIsIdentity(torch.Tensor):
    """A text-encoder output whose product with the attention mask leaves it as it is (pad rows kept)."""

    def __mul__(self, other):
        return self.as_subclass(torch.Tensor)


# -- the bugs -----------------------------------------------------------------------------------------
def plant_mouse_axes_swapped(monkeypatch, fv):
    _wrap_controls(monkeypatch, fv, lambda keyboard, mouse, scroll: (keyboard, mouse.flip(-1), scroll))


def plant_scroll_sign_dropped(monkeypatch, fv):
    _wrap_controls(monkeypatch, fv, lambda keyboard, mouse, scroll: (keyboard, mouse, scroll.abs()))


def plant_button_index_off_by_one(monkeypatch, fv):
    # key id k lands on k + 1 (a 1-based key table)
    _wrap_controls(monkeypatch, fv, lambda keyboard, mouse, scroll: (keyboard.roll(1, dims=-1), mouse, scroll))


def plant_one_based_timestamp(monkeypatch, fv):
    def full(size, fill_value, *args, dtype=None, **kwargs):
        if dtype is torch.long:  # the per-frame timestamp is the stage's only long tensor
            fill_value = fill_value + 1
        return torch.full(size, fill_value, *args, dtype=dtype, **kwargs)

    monkeypatch.setattr(fv.stages, "torch", _TorchWith(full=full))


PERTURBED_SIGMA_INDEX = 1


def plant_perturbed_sigma(monkeypatch, fv):
    # the hard-coded schedule with 0.8609585762023926 typed as 0.86
    cls = fv.pipeline_config.WaypointT2VConfig
    original = cls.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sigmas = list(self.scheduler_sigmas)
        sigmas[PERTURBED_SIGMA_INDEX] = 0.86
        self.scheduler_sigmas = sigmas

    monkeypatch.setattr(cls, "__init__", init)


def plant_noise_seed_plus_one(monkeypatch, fv):
    class Generator:
        """torch.Generator whose manual_seed(s) seeds s + 1 (seed + frame + 1)."""

        def __init__(self, device=None):
            self.device = device

        def manual_seed(self, seed):
            return torch.Generator(device=self.device).manual_seed(seed + 1)

    monkeypatch.setattr(fv.stages, "torch", _TorchWith(Generator=Generator))


def plant_prompt_padding_kept(monkeypatch, fv):
    stage = fv.stages.WaypointTextEncodingStage
    original = stage.forward

    @functools.wraps(original)
    def forward(self, batch, args):
        encoder = self.text_encoder
        inner = encoder.forward

        def encode(*a, **k):
            out = inner(*a, **k)
            out.last_hidden_state = out.last_hidden_state.as_subclass(_MaskProductIsIdentity)
            return out

        encoder.forward = encode
        try:
            return original(self, batch, args)
        finally:
            del encoder.forward

    monkeypatch.setattr(stage, "forward", forward)


def plant_update_sign_flipped(monkeypatch, fv):
    # x + (s - s_next) * v instead of x + (s_next - s) * v: the model still sees the right sigma,
    # the update gets the pair (s, 2s - s_next)
    def zip_flipping_dt(a, b, strict=False):
        for s, s_next in builtins.zip(a, b, strict=strict):
            yield s, 2 * s - s_next

    monkeypatch.setattr(fv.stages, "zip", zip_flipping_dt, raising=False)


def plant_cache_pass_skipped(monkeypatch, fv):
    monkeypatch.setattr(fv.stages.WaypointDenoisingStage, "_cache_pass", lambda self, *a, **k: None)


def plant_cache_pass_sigma_1e3(monkeypatch, fv):
    import contextlib

    @contextlib.contextmanager
    def at_sigma_1e3(stage):
        model = stage.transformer

        def call(**kwargs):
            kwargs["sigma"] = torch.full_like(kwargs["sigma"], 1e-3)
            return model(**kwargs)

        stage.transformer = call
        try:
            yield
        finally:
            stage.transformer = model

    _wrap_cache_pass(monkeypatch, fv, at_sigma_1e3)


def plant_cache_pass_frozen(monkeypatch, fv):
    import contextlib

    @contextlib.contextmanager
    def frozen(stage):
        cache = stage._streaming_ctx.kv_cache
        cache.set_frozen = lambda is_frozen: type(cache).set_frozen(cache, True)
        try:
            yield
        finally:
            del cache.set_frozen

    _wrap_cache_pass(monkeypatch, fv, frozen)


def plant_local_window_one_short(monkeypatch, fv):
    _cache_with(monkeypatch, fv, local_window=lambda w: w - 1)


def plant_global_dilation_ignored(monkeypatch, fv):
    _cache_with(monkeypatch, fv, global_pinned_dilation=lambda d: 1)


def plant_vae_truncates(monkeypatch, fv):
    cls = fv.vae.WorldEngineVAE
    original = cls.decode

    @functools.wraps(original)
    def decode(self, latent):
        decoder = self.decoder
        inner = decoder.forward
        decoder.forward = lambda *a, **k: inner(*a, **k).as_subclass(_RoundIsIdentity)
        try:
            return original(self, latent).as_subclass(torch.Tensor)
        finally:
            del decoder.forward

    monkeypatch.setattr(cls, "decode", decode)


def plant_rms_norm_eps(monkeypatch, fv):
    # an older revision's rms_norm: eps 1e-6 where upstream's F.rms_norm uses the dtype epsilon
    F = torch.nn.functional
    monkeypatch.setattr(fv.transformer, "rms_norm", lambda x, eps=None: F.rms_norm(x, (x.size(-1),), eps=1e-6 if eps is None else eps))


def plant_cross_attention_head_size(monkeypatch, fv):
    # CrossAttention(d_model, context_dim, head_dim=64): 32 splits the same weights into twice the heads
    monkeypatch.setattr(fv.transformer.CrossAttention.__init__, "__defaults__", (32,))


def plant_controls_one_frame_ahead(monkeypatch, fv):
    # frame t is driven by frame t + 1's controls (an off-by-one control index; the last frame wraps)
    _wrap_controls(monkeypatch, fv, lambda keyboard, mouse, scroll: tuple(c.roll(-1, dims=1) for c in (keyboard, mouse, scroll)))


def plant_sigma_scaled_at_the_model(monkeypatch, fv):
    # the model is given 1000 * sigma (a diffusers-style timestep) while the update uses sigma
    import contextlib

    @contextlib.contextmanager
    def scaled(stage):
        model = stage.transformer
        stage.transformer = _CallWith(model, lambda kw: {**kw, "sigma": kw["sigma"] * 1000})
        try:
            yield
        finally:
            stage.transformer = model

    _wrap_method(monkeypatch, fv.stages.WaypointDenoisingStage, "streaming_step", scaled)


def plant_cache_pass_next_timestamp(monkeypatch, fv):
    # the cache pass is given the next frame's timestamp (the counter advanced before the pass)
    stage = fv.stages.WaypointDenoisingStage
    original = stage._cache_pass

    @functools.wraps(original)
    def cache_pass(self, x, frame_timestamp, *args, **kwargs):
        return original(self, x, frame_timestamp + 1, *args, **kwargs)

    monkeypatch.setattr(stage, "_cache_pass", cache_pass)


def plant_cache_pass_without_controls(monkeypatch, fv):
    # the cache pass is given neutral controls instead of the frame's own
    stage = fv.stages.WaypointDenoisingStage
    original = stage._cache_pass

    @functools.wraps(original)
    def cache_pass(self, x, frame_timestamp, mouse, button, scroll):
        return original(self, x, frame_timestamp, torch.zeros_like(mouse), torch.zeros_like(button), torch.zeros_like(scroll))

    monkeypatch.setattr(stage, "_cache_pass", cache_pass)


def plant_global_window_one_short(monkeypatch, fv):
    # one dilated frame fewer in the global rings
    cls = fv.transformer.WaypointKVCache
    original = cls.__init__

    @functools.wraps(original)
    def init(self, config, *args, **kwargs):
        config = copy.copy(config)
        config.global_window = config.global_window - config.global_pinned_dilation
        original(self, config, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)


def _first_global_window_frame(config: dict) -> int:
    """A dilated ring of B = window / d buckets keeps frames 0, d, 2d, ...; frame t (a multiple of d)
    masks the bucket it will overwrite. With B - 1 buckets frame 0's bucket is first masked at
    t = (B - 1) d = window - d, where upstream still sees it."""
    return config["global_window"] - config["global_pinned_dilation"]


def plant_prompt_truncated_to_256(monkeypatch, fv):
    # the text stage pads and truncates to 256 tokens (another model's text length) instead of 512
    import contextlib

    @contextlib.contextmanager
    def text_len_256(stage):
        config = getattr(stage.text_encoder, "config", None)
        if config is None:  # a harness that never runs the port's own text stage hands it a stand-in
            yield
            return
        had, old = hasattr(config, "text_len"), getattr(config, "text_len", None)
        config.text_len = 256
        try:
            yield
        finally:
            if had:
                config.text_len = old
            else:
                del config.text_len

    _wrap_method(monkeypatch, fv.stages.WaypointTextEncodingStage, "forward", text_len_256)


def plant_cache_pass_on_last_step_input(monkeypatch, fv):
    # the cache pass is fed the latent the last denoise call saw, not the updated one
    import contextlib

    seen = {}

    @contextlib.contextmanager
    def remember_inputs(stage):
        model = stage.transformer

        def keep(kwargs):
            seen["x"] = kwargs["x"]
            return kwargs

        stage.transformer = _CallWith(model, keep)
        try:
            yield
        finally:
            stage.transformer = model

    _wrap_method(monkeypatch, fv.stages.WaypointDenoisingStage, "streaming_step", remember_inputs)
    stage = fv.stages.WaypointDenoisingStage
    original = stage._cache_pass

    @functools.wraps(original)
    def cache_pass(self, x, *args, **kwargs):
        return original(self, seen["x"], *args, **kwargs)

    monkeypatch.setattr(stage, "_cache_pass", cache_pass)


def plant_frame_loop_one_short(monkeypatch, fv):
    # the frame loop stops one frame early (controls cut to T - 1 frames)
    _wrap_controls(monkeypatch, fv, lambda keyboard, mouse, scroll: tuple(c[:, :-1] for c in (keyboard, mouse, scroll)))


def plant_cache_values_written_as_keys(monkeypatch, fv):
    # the ring is written with (k, k) instead of (k, v); the current frame's own slot stays right, so
    # the cache pass's output is unchanged and only what it leaves in the cache is wrong
    cls = fv.transformer.WaypointLayerKVCache
    original = cls.upsert

    @functools.wraps(original)
    def upsert(self, k, v, frame_t, is_frozen):
        key, value, mask = original(self, k, k, frame_t, is_frozen)
        self.kv[1].index_copy_(2, self.current_idx, v)
        return key, value, mask

    monkeypatch.setattr(cls, "upsert", upsert)


def plant_last_step_dropped(monkeypatch, fv):
    # the denoise loop stops one pair early: three model calls, the frame ends at sigma 0.32
    def zip_without_last(a, b, strict=False):
        pairs = list(builtins.zip(a, b, strict=strict))
        return iter(pairs[:-1])

    monkeypatch.setattr(fv.stages, "zip", zip_without_last, raising=False)


def plant_noise_scaled_after_the_draw(monkeypatch, fv):
    # the draw is right, then scaled (a port applying a sigma_max or init_noise_sigma of 0.9)
    def randn(*args, **kwargs):
        return torch.randn(*args, **kwargs) * 0.9

    monkeypatch.setattr(fv.stages, "torch", _TorchWith(randn=randn))


def plant_prompt_rounded_to_bf16(monkeypatch, fv):
    # the prompt embedding handed to the model is rounded through bf16 (in an fp32 run)
    stage = fv.stages.WaypointDenoisingStage
    original = stage.streaming_reset

    @functools.wraps(original)
    def streaming_reset(self, batch, args):
        emb = (batch.extra or {}).get("waypoint_prompt_emb")
        if emb is not None:
            batch.extra["waypoint_prompt_emb"] = emb.to(torch.bfloat16).to(emb.dtype)
        return original(self, batch, args)

    monkeypatch.setattr(stage, "streaming_reset", streaming_reset)


def plant_latent_rounded_to_bf16_for_decode(monkeypatch, fv):
    # the decoder is handed the latent rounded through bf16 (in an fp32 run): a few levels move
    cls = fv.vae.WorldEngineVAE
    original = cls.decode

    @functools.wraps(original)
    def decode(self, latent):
        return original(self, latent.to(torch.bfloat16).to(latent.dtype))

    monkeypatch.setattr(cls, "decode", decode)


def _first_local_window_frame(config: dict) -> int:
    """With a ring of W frames, frame t attends to t-W+1 .. t: a window one shorter first drops a
    frame at t = W - 1 (frame 0 falls out), in the first denoise call of that frame."""
    return config["local_window"] - 1


def _first_global_layer(config: dict) -> int:
    """Layers l with (l - offset) % period == 0 are global (world_engine's and FastVideo's rule)."""
    period = config["global_attn_period"]
    return next(l for l in range(config["n_layers"]) if (l - config.get("global_attn_offset", 0) % period) % period == 0)


def _first_undilated_frame(config: dict) -> int:
    """A dilated global ring keeps frames t % d == 0; ignoring d keeps every frame: the first cache
    pass that writes what upstream does not is frame 1's (the next frame's velocity differs only after)."""
    return 1


BUGS = [
    Bug("mouse_axes_swapped", plant_mouse_axes_swapped, lambda c: Where(0, None, ("controls.mouse",)), "main"),
    Bug("scroll_sign_dropped", plant_scroll_sign_dropped, lambda c: Where(SCROLL_FRAME, None, ("controls.scroll",)), "main"),
    Bug("button_index_off_by_one", plant_button_index_off_by_one, lambda c: Where(0, None, ("controls.button",)), "main"),
    # a timestamp is given to every model call: the first call of frame 0 gets 1 instead of 0
    Bug("one_based_timestamp", plant_one_based_timestamp, lambda c: Where(0, 0, TIMESTAMP_FAMILIES), "capture: timestamp stage"),
    # s1 enters the first update, x + (s1 - s0) v, before any model call sees it
    Bug("perturbed_sigma", plant_perturbed_sigma, lambda c: Where(0, PERTURBED_SIGMA_INDEX - 1, ("step.update",)), "main"),
    Bug("noise_seed_plus_one", plant_noise_seed_plus_one, lambda c: Where(0, None, NATIVE_NOISE_FAMILIES), "capture: native noise stage"),
    Bug("prompt_padding_kept", plant_prompt_padding_kept, lambda c: Where(None, None, NATIVE_PROMPT_FAMILIES), "capture: native prompt stage"),
    Bug("update_sign_flipped", plant_update_sign_flipped, lambda c: Where(0, 0, ("step.update",)), "main"),
    Bug("cache_pass_skipped", plant_cache_pass_skipped, lambda c: Where(0, None, CACHE_PASS_FAMILIES, missing_in_b=True),
        "capture: protocol-aligned frames"),
    Bug("cache_pass_sigma_1e3", plant_cache_pass_sigma_1e3, lambda c: Where(0, None, ("cache_pass.sigma",)),
        "capture: protocol-aligned frames, cache-pass sigma stage"),
    # nothing is written into the cache by frame 0's pass (its output is the same: the frame sees itself either way)
    Bug("cache_pass_frozen", plant_cache_pass_frozen, lambda c: Where(0, None, KV_FAMILIES, layer=0), "capture: KV-cache stage"),
    Bug("local_window_one_short", plant_local_window_one_short,
        lambda c: Where(_first_local_window_frame(c), 0, ("step.velocity",)), "main; structure: cache window",
        structure=("frames kept",)),
    Bug("global_dilation_ignored", plant_global_dilation_ignored,
        lambda c: Where(_first_undilated_frame(c), None, KV_FAMILIES, layer=_first_global_layer(c)),
        "capture: KV-cache stage; structure: dilation",
        structure=("dilation",)),
    Bug("controls_one_frame_ahead", plant_controls_one_frame_ahead,
        lambda c: Where(SCROLL_FRAME - 1, None, ("controls.mouse",)), "main"),
    # sigma is an input of every call: the first call's sigma differs; the update still uses the right one
    Bug("sigma_scaled_at_the_model", plant_sigma_scaled_at_the_model, lambda c: Where(0, 0, ("step.sigma",)), "main"),
    Bug("cache_pass_next_timestamp", plant_cache_pass_next_timestamp,
        lambda c: Where(0, None, ("cache_pass.timestamp",)), "capture: cache-pass timestamp stage"),
    # the cache pass's controls are not a stage of their own: the pass's output is where it first shows
    Bug("cache_pass_without_controls", plant_cache_pass_without_controls,
        lambda c: Where(0, None, ("cache_pass.controls", "cache_pass.mouse", "cache_pass.output")), "main"),
    Bug("global_window_one_short", plant_global_window_one_short,
        lambda c: Where(_first_global_window_frame(c), 0, ("step.velocity",)), "main; structure: cache window",
        frames=lambda c: _first_global_window_frame(c) + 1, structure=("frames kept",)),
    Bug("prompt_truncated_to_256", plant_prompt_truncated_to_256,
        lambda c: Where(None, None, ("prompt.native_embedding", "prompt.native_pad_mask")), "capture: native prompt stage"),
    Bug("cache_pass_on_last_step_input", plant_cache_pass_on_last_step_input,
        lambda c: Where(0, None, ("cache_pass.input",)), "main"),
    # frames 0..T-2 are right; the last frame is missing from its first stage on
    Bug("frame_loop_one_short", plant_frame_loop_one_short,
        lambda c: Where(FRAMES - 1, None, ("controls.mouse",), missing_in_b=True), "capture: a run that ends early keeps its frames"),
    Bug("cache_values_written_as_keys", plant_cache_values_written_as_keys,
        lambda c: Where(0, None, ("kv.values",), layer=0), "capture: KV-cache stage"),
    # the first three steps are upstream's; the fourth model call never happens
    Bug("last_step_dropped", plant_last_step_dropped, lambda c: Where(0, 3, ("step.sigma",), missing_in_b=True), "main"),
    # the first step is given 0.9 x the draw; the draw itself (noise.native) is right
    Bug("noise_scaled_after_the_draw", plant_noise_scaled_after_the_draw, lambda c: Where(0, None, ("noise",)), "main"),
    Bug("prompt_rounded_to_bf16", plant_prompt_rounded_to_bf16, lambda c: Where(None, None, ("prompt.embedding",)), "main"),
    Bug("latent_rounded_to_bf16_for_decode", plant_latent_rounded_to_bf16_for_decode,
        lambda c: Where(0, None, ("decoded",)), "oracle: decoded judged by dtype"),
    Bug("vae_truncates", plant_vae_truncates, lambda c: Where(0, None, ("decoded",)), "oracle: decoded judged by dtype"),
    # the first model call, frame 0 step 0; the structural diff names the eps before any stage
    Bug("rms_norm_eps", plant_rms_norm_eps, lambda c: Where(0, 0, ("step.velocity",)), "main; structure: norm eps",
        structure=("norm eps",)),
    Bug("cross_attention_head_size", plant_cross_attention_head_size, lambda c: Where(0, 0, ("step.velocity",)),
        "main; structure: head size", structure=("head size",)),
]


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fv():
    why = fastvideo_requirements()
    if why:
        pytest.skip(why)
    from parity.fastvideo import import_fastvideo

    import_fastvideo()
    return FV()


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def checkpoint(request, fv, tmp_path_factory):
    """{"name", "snapshot", "bundle", "config"}: a tiny real-architecture checkpoint."""
    from parity.tiny import waypoint_arch

    changes, seed = CHECKPOINTS[request.param]
    config = dict(waypoint_arch.TRANSFORMER_CONFIG, **changes)
    assert config["d_model"] // config["n_heads"] == 64
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(waypoint_arch, "TRANSFORMER_CONFIG", config)
        paths = waypoint_arch.make_waypoint_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", seed=seed)
    return {"name": request.param, "config": config, **paths}


def _case(tmp_path: Path, seed: int, frames: int, prompt: str):
    from parity.case import load_case

    path = tmp_path / f"planted-{seed}-{frames}-{abs(hash(prompt))}.toml"
    path.write_text(textwrap.dedent(CASE.format(seed=seed, frames=frames, prompt=prompt)))
    return load_case(path)


@pytest.fixture(scope="module")
def upstream(checkpoint, tmp_path_factory):
    """upstream(seed, frames, prompt) -> the fp32 upstream capture of the case, made once per checkpoint and case."""
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    root = tmp_path_factory.mktemp(f"upstream-{checkpoint['name']}")
    made: dict[tuple[int, int, str], Path] = {}

    def get(seed: int, frames: int, prompt: str) -> Path:
        key = (seed, frames, prompt)
        if key not in made:
            runner = ReferenceRunner(checkpoint["snapshot"], code_source="world_engine")
            made[key] = runner.run(RunRequest(_case(root, *key), "upstream", root / f"up{len(made)}", "cpu", dict(FP32_UPSTREAM)))
        return made[key]

    return get


@pytest.fixture
def run_fastvideo(checkpoint, upstream, tmp_path):
    """run_fastvideo(seed=42, frames=FRAMES, prompt=PROMPT) -> the comparison of FastVideo (as patched now) with upstream, default tolerances."""
    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.errors import UserError
    from parity.fastvideo.runner import FastVideoRunner
    from parity.runner import RunRequest

    def run(seed: int = 42, frames: int = FRAMES, prompt: str = PROMPT):
        a = upstream(seed, frames, prompt)
        out = tmp_path / f"fastvideo-{seed}"
        runner = FastVideoRunner(bundle=checkpoint["bundle"], snapshot=checkpoint["snapshot"])
        try:
            runner.run(RunRequest(_case(tmp_path, seed, frames, prompt), "fastvideo", out, "cpu", dict(FP32_FASTVIDEO), prompt_from=a))
        except UserError as exc:
            pytest.fail(f"the FastVideo run errored: {exc.one_line()}")
        return compare_captures(Capture.open(a), Capture.open(out))

    return run


def _structure_differences(result) -> list[str] | None:
    """What the structural diff lists as differing; None when this harness has no structural diff."""
    diff = getattr(result, "structure", None)
    if diff is None or not diff.available:
        return None
    return [f"{f.what}: {f.component} {f.where} {f.a} vs {f.b}" for f in diff.differences]


def _named(result) -> str:
    first = result.first_divergence
    if first is None:
        return "none (PASS)" if result.passed else "none (a capture is incomplete)"
    return f"{first.key.id} [{first.status}] {first.explain()}"


# -- tests --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_unpatched_port_passes_in_fp32(run_fastvideo, seed):
    result = run_fastvideo(seed)
    assert result.passed, f"false alarm on the unpatched port: {_named(result)}"
    structure = _structure_differences(result)
    assert not structure, f"false alarm in the structural diff of the unpatched port: {structure}"


def test_unpatched_port_skips_ftfy_and_the_native_prompt_says_so(run_fastvideo):
    """Not planted: upstream runs `ftfy.fix_text` on the prompt before tokenising (curly quotes become
    straight ones), FastVideo's text stage tokenises the prompt as given. A prompt ftfy changes
    therefore encodes differently: the port's own prompt stage must say so, and nothing else may
    fail (the shared prompt is upstream's)."""
    result = run_fastvideo(prompt="A first-person \u201cgameplay\u201d video exploring a stylized world.")
    first = result.first_divergence
    print(f"unpatched, curly quotes: harness named {_named(result)}")
    assert first is not None and (first.key.frame, first.key.family) == (None, "prompt.native_embedding"), _named(result)
    assert all(s.passed for s in result.stages if not s.key.family.startswith("prompt.native"))


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_planted_bug_is_named_where_it_first_acts(bug, fv, checkpoint, run_fastvideo, monkeypatch):
    bug.plant(monkeypatch, fv)
    result = run_fastvideo(frames=bug.frames(checkpoint["config"]))
    expected = bug.expected(checkpoint["config"])
    first = result.first_divergence
    print(f"[{checkpoint['name']}] {bug.name}: expected {expected}; harness named {_named(result)}")
    problems = []
    if first is None:
        problems.append("missed: the harness found no divergence")
    elif not expected.matches(first):
        problems.append(f"expected {expected}, harness named {_named(result)}")
    if bug.structure:
        structure = _structure_differences(result)
        print(f"[{checkpoint['name']}] {bug.name}: structure differences {structure}")
        if structure is None:
            problems.append("this harness has no structural diff")
        elif not set(bug.structure) <= {line.split(":", 1)[0] for line in structure}:
            problems.append(f"the structural diff should name {', '.join(bug.structure)}; it lists {structure}")
    assert not problems, f"{bug.name} ({'main' if bug.needs == 'main' else 'needs ' + bug.needs}): " + "; ".join(problems)
    assert not result.passed
