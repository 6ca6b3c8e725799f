"""Single transformer calls made the way a FastVideo revision's pipeline makes them (module drill-down)."""

from __future__ import annotations

import sys

from parity.fastvideo.generation import Generation


class TransformerCalls:
    """Single transformer calls made the way this FastVideo revision's pipeline makes them: its own
    KV cache (created by its own `streaming_reset`), its own frozen flag, its forward context.

    - `stages` (head): the denoising stage's context and `WaypointKVCache`; `set_frozen(True)`
      around denoise calls; the cache pass is the stage's own `_cache_pass`.
    - `streaming` (640e654f3, 2e2375dc8): the pipeline's flat per-layer cache with its shared
      `frozen_ref`; the cache pass is a call with `update_cache=True` at sigma 0, unfrozen.
    """

    def __init__(self, built, generation: Generation, pipe, args, attention: str, device: str):
        self.built, self.generation, self.pipe, self.args = built, generation, pipe, args
        self.attention, self.device = attention, device
        self.model = built.model
        self.owner = None
        self.ctx = None

    def reset(self, prompt_emb, prompt_pad_mask, frames: int) -> None:
        """A fresh cache and streaming context, the prompt injected as the runner injects it."""
        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch

        extra = {"waypoint_prompt_emb": prompt_emb.to(self.device), "waypoint_prompt_pad_mask": prompt_pad_mask.to(self.device)}
        fields = dict(data_type="t2v", prompt=None, seed=0, num_frames=frames, extra=extra)
        known = getattr(ForwardBatch, "__dataclass_fields__", fields)
        batch = ForwardBatch(**{k: v for k, v in fields.items() if k in known})
        if self.generation.name == "stages":
            stage = next(s for s in self.pipe.stages if hasattr(s, "_cache_pass"))
            stage.streaming_reset(batch, self.args)
            self.owner, self.ctx, self.dtype = stage, stage._streaming_ctx, stage.dtype
        else:
            self.pipe.streaming_reset(batch, self.args)
            ctx = self.pipe._streaming_ctx
            if self.generation.prompt_injection == "context":
                ctx.prompt_emb, ctx.prompt_pad_mask = extra["waypoint_prompt_emb"], extra["waypoint_prompt_pad_mask"]
            self.owner, self.ctx, self.dtype = self.pipe, ctx, next(self.model.parameters()).dtype
        self.module = sys.modules[type(self.owner).__module__]
        self.prompt_emb = self.ctx.prompt_emb.to(device=self.device, dtype=self.dtype)
        self.prompt_pad_mask = self.ctx.prompt_pad_mask.to(self.device) if self.ctx.prompt_pad_mask is not None else None

    def _frozen(self, value: bool) -> None:
        cache = self.ctx.kv_cache
        if cache is None:
            return
        if hasattr(cache, "set_frozen"):
            cache.set_frozen(value)
        else:
            cache[0]["frozen_ref"][0] = value

    def _context(self, step: int):
        m = self.module
        return m.set_forward_context(current_timestep=step, attn_metadata=m.SDPAMetadata(current_timestep=step, attn_mask=None),
                                     forward_batch=None)

    def _controls(self, controls: dict) -> dict:
        return {k: controls[k].to(device=self.device, dtype=self.dtype) for k in ("mouse", "button", "scroll")}

    def denoise(self, x, sigma: float, frame: int, step: int, controls: dict):
        """One denoise call (cache frozen), returns the velocity."""
        import torch

        self._frozen(True)
        x = x.to(device=self.device, dtype=self.dtype)
        with self._context(step):
            return self.model(x=x, sigma=torch.full((x.shape[0], 1), float(sigma), device=self.device, dtype=self.dtype),
                              frame_timestamp=torch.full((x.shape[0], 1), frame, device=self.device, dtype=torch.long),
                              prompt_emb=self.prompt_emb, prompt_pad_mask=self.prompt_pad_mask, kv_cache=self.ctx.kv_cache,
                              **self._controls(controls))

    def cache_pass(self, x, frame: int, controls: dict):
        """The sigma = 0 pass that writes this frame's K/V, made as the revision makes it."""
        import torch

        x = x.to(device=self.device, dtype=self.dtype)
        ts = torch.full((x.shape[0], 1), frame, device=self.device, dtype=torch.long)
        c = self._controls(controls)
        if hasattr(self.owner, "_cache_pass"):
            self.owner._cache_pass(x, ts, c["mouse"], c["button"], c["scroll"])
            return
        if self.ctx.kv_cache is None:
            return
        self._frozen(False)
        try:
            with self._context(0):
                self.model(x=x, sigma=torch.zeros((x.shape[0], 1), device=self.device, dtype=self.dtype), frame_timestamp=ts,
                           prompt_emb=self.prompt_emb, prompt_pad_mask=self.prompt_pad_mask, kv_cache=self.ctx.kv_cache,
                           update_cache=True, **c)
        finally:
            self._frozen(True)

