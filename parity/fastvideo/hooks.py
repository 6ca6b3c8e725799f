"""What the harness installs on FastVideo for one run, and how it tells frames and steps apart.

For the duration of the run only (all removed in `finally`):
- a forward pre-hook and a forward hook (with kwargs) on the transformer: every call is recorded
  (model input, sigma, timestamp, controls, prompt, output);
- around the denoising stage's own `_cache_pass` (PR head): a flag saying "this call is the stage's
  cache pass";
- an instance attribute over `vae.decode` that records its input and its uint8 output;
- a wrapper over `torch.randn` that recognises the per-frame latent draw by its shape: the side's
  own draw is always made and kept (`noise.native`, its rule named by `parity.native_noise`), and
  with shared noise `parity.alignment.shared_noise(seed, frame, ...)` is returned instead.

Frames and steps come from what the pipeline does, never from sigma values:
- a frame starts at its per-frame noise draw (a `torch.randn` of exactly one frame's latent) and ends
  at the next one, or when the pipeline stage or streaming step returns; a denoise call after the
  frame's cache pass with no noise drawn in between also starts the next frame (its noise is then
  missing, which the comparison names);
- a model call is the cache pass when the pipeline says so: it is made inside the stage's
  `_cache_pass`, or with `update_cache=True` (640e654f3, 2e2375dc8), or while the KV cache is
  unfrozen. Only a revision that offers none of these signals falls back to `sigma == 0`;
- every other call is the next denoise step, however many there are;
- the k-th `vae.decode` belongs to frame k.
Whatever the port does (no cache pass, a cache pass at sigma 1e-3 or with the cache frozen, an extra
step, a frame that ends early) is therefore recorded as it happened. After each cache pass the KV
cache is read in its logical view (`parity.kv_view`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from parity import alignment
from parity.errors import UserError
from parity.kv_view import KVTracker, frozen_flag
from parity.native_noise import NoiseWitness

CALL_KEYS = ("x", "sigma", "frame_timestamp", "mouse", "button", "scroll", "update_cache")


@dataclass
class Call:
    inputs: dict[str, Any]
    cache_pass: bool
    out: Any = None
    kv: dict | None = None


@dataclass
class FrameLog:
    """One frame as the pipeline produced it."""

    index: int
    noise_native: Any = None
    noise: Any = None
    noise_note: dict | None = None
    steps: list[Call] = field(default_factory=list)
    cache: Call | None = None
    extra_cache_passes: int = 0
    decode_input: Any = None
    decoded: Any = None

    @property
    def first_call(self) -> Call | None:
        return self.steps[0] if self.steps else self.cache


def _clone(v):
    import torch

    return v.detach().clone() if torch.is_tensor(v) else v


class Recorder:
    """Watches one run; calls `on_frame(FrameLog)` as each frame ends and `on_decode(index, input,
    output)` for a decode that comes after its frame ended (the head decodes in a later stage)."""

    def __init__(self, seed: int, latent_shape: tuple, shared: bool, tokens_per_frame: int, kv_mode: str,
                 on_frame: Callable[[FrameLog], None], on_decode: Callable[[int, Any, Any], None]):
        self.seed, self.latent_shape, self.shared = seed, tuple(latent_shape), shared
        self.tpf, self.kv_mode = tokens_per_frame, kv_mode
        self.on_frame, self.on_decode = on_frame, on_decode
        self.frames: list[FrameLog] = []
        self.open: FrameLog | None = None
        self.prompt: tuple | None = None
        self.decodes = 0
        self.calls = 0
        self.cache_signal = "sigma == 0 (fallback: no structural signal)"
        self._in_cache_pass = False
        self._structural = False
        self._tracker: KVTracker | None = None
        self._tracked_cache = None
        self.kv_layout: str | None = None
        self._current: Call | None = None

    # -- frames -------------------------------------------------------------------------------------
    def _start_frame(self) -> FrameLog:
        self.end_frame()
        self.open = FrameLog(len(self.frames))
        self.frames.append(self.open)
        return self.open

    def end_frame(self) -> None:
        """The open frame is complete (next noise draw, or the stage / streaming step returned)."""
        if self.open is not None:
            frame, self.open = self.open, None
            self.on_frame(frame)

    def drop_open_frame(self) -> None:
        """FastVideo raised in the middle of a frame: that frame is not finished, it is not written."""
        if self.open is not None:
            self.frames.remove(self.open)
            self.open = None

    def _frame_for_call(self) -> FrameLog:
        # a model call before any noise draw (a seed image's cache pass) opens a frame of its own
        return self.open if self.open is not None else self._start_frame()

    # -- cache pass or denoise step -----------------------------------------------------------------
    def _is_cache_pass(self, kwargs) -> bool:
        if self._in_cache_pass or kwargs.get("update_cache") is True:
            return True
        if frozen_flag(kwargs.get("kv_cache")) is False:
            return True
        if self._structural or kwargs.get("sigma") is None:
            return False
        return bool((kwargs["sigma"] == 0).all())

    @contextlib.contextmanager
    def installed(self, model, vae, cache_owner=None):
        import torch

        self._structural = cache_owner is not None or "update_cache" in inspect.signature(model.forward).parameters
        if cache_owner is not None:
            self.cache_signal = f"inside {type(cache_owner).__name__}._cache_pass, or the KV cache unfrozen"
        elif self._structural:
            self.cache_signal = "update_cache=True, or the KV cache unfrozen"

        def pre(module, args, kwargs):
            if args:
                raise UserError("FastVideo called the transformer with positional arguments; the adapter expects keywords")
            self.calls += 1
            frame = self._frame_for_call()
            if self.prompt is None:
                self.prompt = (_clone(kwargs.get("prompt_emb")), _clone(kwargs.get("prompt_pad_mask")))
            call = Call({k: _clone(v) for k, v in kwargs.items() if k in CALL_KEYS}, self._is_cache_pass(kwargs))
            if not call.cache_pass and frame.cache is not None:
                frame = self._start_frame()  # a denoise call after the cache pass, with no noise drawn: the next frame
            if call.cache_pass:
                if frame.cache is None:
                    frame.cache = call
                    self._before_cache_pass(kwargs.get("kv_cache"))
                else:
                    frame.extra_cache_passes += 1
            else:
                frame.steps.append(call)
            self._current = call

        def post(module, args, kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            call = self._current
            call.out = _clone(out)
            if call.cache_pass and self.open is not None and call is self.open.cache and self._tracker is not None:
                call.kv = self._tracker.after_pass(self.open.index)

        latent_tail = self.latent_shape[-3:]
        original_randn = torch.randn
        witness = NoiseWitness(self.seed, randn=original_randn)

        def randn(*size, **kwargs):
            shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
            if not (len(shape) >= 3 and tuple(shape[-3:]) == latent_tail and math.prod(shape) == math.prod(self.latent_shape)
                    and kwargs.get("out") is None):
                return original_randn(*size, **kwargs)
            frame = self._start_frame()
            native = original_randn(*size, **kwargs)  # the port's own draw, from whatever RNG it chose
            frame.noise_note = witness.identify(native, frame.index, kwargs.get("generator"))
            frame.noise_native = native.detach().clone().reshape(self.latent_shape)
            used = native
            if self.shared:
                torch.randn = original_randn  # shared_noise draws with torch.randn itself
                try:
                    used = alignment.shared_noise(self.seed, frame.index, shape, native.dtype, native.device)
                finally:
                    torch.randn = randn
            frame.noise = used.detach().clone().reshape(self.latent_shape)
            return used

        original_decode = vae.__dict__.get("decode")
        bound_decode = vae.decode

        def decode(latent, *a, **k):
            out = bound_decode(latent, *a, **k)
            image = out.sample if hasattr(out, "sample") else out
            index, self.decodes = self.decodes, self.decodes + 1
            if self.open is not None and self.open.index == index:
                self.open.decode_input, self.open.decoded = latent.detach().clone(), image.detach().clone()
            else:
                self.on_decode(index, latent.detach().clone(), image.detach().clone())
            return out

        restore_cache_pass = None
        if cache_owner is not None:
            inner = cache_owner._cache_pass  # looked up now: a class-level patch in a test is what runs

            def cache_pass(*a, **k):
                self._in_cache_pass = True
                try:
                    return inner(*a, **k)
                finally:
                    self._in_cache_pass = False

            restore_cache_pass = cache_owner.__dict__.get("_cache_pass")
            cache_owner._cache_pass = cache_pass

        h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = model.register_forward_hook(post, with_kwargs=True)
        torch.randn = randn
        vae.decode = decode
        try:
            yield self
        finally:
            torch.randn = original_randn
            h1.remove()
            h2.remove()
            if original_decode is None:
                with contextlib.suppress(AttributeError):
                    del vae.decode
            else:
                vae.decode = original_decode
            if cache_owner is not None:
                if restore_cache_pass is None:
                    with contextlib.suppress(AttributeError):
                        del cache_owner._cache_pass
                else:
                    cache_owner._cache_pass = restore_cache_pass

    def _before_cache_pass(self, cache) -> None:
        if cache is None or self.kv_mode == "off":
            return
        if cache is not self._tracked_cache:  # a new cache (streaming_reset): labels start over
            self._tracked_cache = cache
            self._tracker = KVTracker(cache, self.tpf, digest=self.kv_mode == "digest")
            self.kv_layout = self._tracker.layout.name if self._tracker.readable else None
        self._tracker.before_pass()
