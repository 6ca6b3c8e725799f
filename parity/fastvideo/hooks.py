"""What the harness installs on FastVideo for one run, and what it records there.

For the duration of the run only:
- a forward pre-hook and a forward hook (with kwargs) on the transformer: every call is recorded
  (model input, sigma, timestamp, controls, prompt, output);
- an instance attribute over `vae.decode` that records its input and its uint8 output;
- a wrapper over `torch.randn` that recognises the per-frame latent draw by its shape: with shared
  noise it returns `parity.alignment.shared_noise(seed, frame, ...)` in the requested dtype instead,
  with native noise it passes the call through and records what was drawn.
All are removed in `finally`.
"""

from __future__ import annotations

import contextlib

from parity import alignment
from parity.errors import UserError


class Recorder:
    """Transformer calls, noise draws and decodes seen during one run."""

    def __init__(self, seed: int, frames: int, latent_shape: tuple, shared: bool):
        self.seed, self.n_frames, self.latent_shape, self.shared = seed, frames, latent_shape, shared
        self.calls: list[dict] = []
        self.noises: list = []
        self.decoded: list = []
        self.decode_inputs: list = []
        self.sigma_dtype = None
        self.noise_dtype = None
        self.batch_latents = None
        self.sigma_tensor = None

    @contextlib.contextmanager
    def installed(self, model, vae):
        import torch

        def pre(module, args, kwargs):
            if args:
                raise UserError("FastVideo called the transformer with positional arguments; the adapter expects keywords")
            c = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()
                 if k in ("x", "sigma", "frame_timestamp", "mouse", "button", "scroll", "update_cache")}
            if not self.calls:
                c["prompt_emb"] = kwargs.get("prompt_emb")
                c["prompt_pad_mask"] = kwargs.get("prompt_pad_mask")
                c["prompt_emb"] = c["prompt_emb"].detach().clone() if c["prompt_emb"] is not None else None
                c["prompt_pad_mask"] = c["prompt_pad_mask"].detach().clone() if c["prompt_pad_mask"] is not None else None
            self.calls.append(c)

        def post(module, args, kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.calls[-1]["out"] = out.detach().clone()

        latent_tail = self.latent_shape[-3:]
        original_randn = torch.randn

        def randn(*size, **kwargs):
            shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
            if len(shape) >= 3 and tuple(shape[-3:]) == latent_tail and kwargs.get("out") is None:
                frame = len(self.noises)
                dtype = kwargs.get("dtype") or torch.get_default_dtype()
                self.noise_dtype = dtype
                if self.shared:
                    torch.randn = original_randn  # shared_noise draws with torch.randn itself
                    try:
                        t = alignment.shared_noise(self.seed, frame, shape, dtype, kwargs.get("device") or "cpu")
                    finally:
                        torch.randn = randn
                else:
                    t = original_randn(*size, **kwargs)
                self.noises.append(t.detach().clone().reshape(self.latent_shape))
                return t
            return original_randn(*size, **kwargs)

        original_decode = vae.__dict__.get("decode")
        bound_decode = vae.decode

        def decode(latent, *a, **k):
            self.decode_inputs.append(latent.detach().clone())
            out = bound_decode(latent, *a, **k)
            frame = out.sample if hasattr(out, "sample") else out
            self.decoded.append(frame.detach().clone())
            return out

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

    def frames(self) -> list[dict]:
        """Calls grouped per frame: denoise steps in order, then the cache pass (sigma 0 / update_cache)."""
        out: list[dict] = []
        current = None
        for c in self.calls:
            sigma = c["sigma"]
            is_cache = bool(c.get("update_cache")) or bool((sigma == 0).all())
            if current is None:
                current = {"steps": [], "cache": None}
                out.append(current)
            if is_cache:
                current["cache"] = c
                current = None
            else:
                current["steps"].append(c)
        return out
