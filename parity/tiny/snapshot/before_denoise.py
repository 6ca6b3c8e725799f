"""KV cache of the tiny Waypoint-style test model (written by waypoint-parity).

Same protocol as upstream's StaticKVCache: one ring per layer; every `global_attn_period`-th layer
(0, period, ...) is global and keeps every `global_pinned_dilation`-th frame, `global_window /
dilation` of them; the others are local and keep the last `local_window` frames. While frozen
(denoise steps) `upsert` only reads: attention sees the cached frames plus the current one.
Unfrozen (the cache pass) it writes the frame's K/V into the ring. Frame 0 with an empty cache
attends only to itself.

Static shapes, no host sync: each ring is one preallocated buffer with a validity mask, and the
frame count that decides a global layer's writes is kept on the host (one cache pass per frame),
so a compiled model sees the same shapes every call and never waits on the GPU.
"""

import torch

# The ring bookkeeping is host-side Python (slot counters); a compiled model calls it as an opaque
# function instead of recompiling for every slot value.
_not_compiled = getattr(getattr(torch, "compiler", None), "disable", lambda fn: fn)


class StaticKVCache:
    def __init__(self, config, batch_size, dtype):
        cfg = config if isinstance(config, dict) else vars(config)
        self.batch_size, self.dtype = batch_size, dtype
        self.n_layers = cfg["n_layers"]
        period, dilation = cfg["global_attn_period"], cfg["global_pinned_dilation"]
        self.is_global = [i % period == 0 for i in range(self.n_layers)]
        self._spec = [
            (max(1, cfg["global_window"] // dilation), dilation) if g else (cfg["local_window"], 1) for g in self.is_global
        ]
        self.frozen = True
        self.reset()

    def reset(self):
        self.k = [None] * self.n_layers
        self.v = [None] * self.n_layers
        self.valid = [None] * self.n_layers
        self.next_slot = [0] * self.n_layers
        self.passes = [0] * self.n_layers  # cache passes seen per layer = frames written so far

    def set_frozen(self, frozen):
        self.frozen = bool(frozen)

    def _allocate(self, layer_idx, k):
        slots, _ = self._spec[layer_idx]
        B, H, N, D = k.shape
        self.k[layer_idx] = torch.zeros(B, H, slots * N, D, dtype=self.dtype, device=k.device)
        self.v[layer_idx] = torch.zeros(B, H, slots * N, D, dtype=self.dtype, device=k.device)
        self.valid[layer_idx] = torch.zeros(slots * N, dtype=torch.bool, device=k.device)

    @_not_compiled
    def upsert(self, layer_idx, k, v, frame_timestamp):
        """k, v (B, kv_heads, N, hd) of the current frame -> (k, v, mask) for attention; mask is a
        bool (1, 1, 1, keys) with True where a key takes part."""
        if self.k[layer_idx] is None:
            self._allocate(layer_idx, k)
        slots, dilation = self._spec[layer_idx]
        N = k.shape[2]
        if not self.frozen:
            frame = self.passes[layer_idx]
            self.passes[layer_idx] += 1
            if frame % dilation == 0:
                s = self.next_slot[layer_idx]
                self.k[layer_idx][:, :, s * N:(s + 1) * N] = k.to(self.dtype)
                self.v[layer_idx][:, :, s * N:(s + 1) * N] = v.to(self.dtype)
                self.valid[layer_idx][s * N:(s + 1) * N] = True
                self.next_slot[layer_idx] = (s + 1) % slots
                mask = self.valid[layer_idx].view(1, 1, 1, -1)
                return self.k[layer_idx].to(k.dtype), self.v[layer_idx].to(v.dtype), mask
        current = torch.ones(N, dtype=torch.bool, device=k.device)
        mask = torch.cat([self.valid[layer_idx], current]).view(1, 1, 1, -1)
        return (torch.cat([self.k[layer_idx].to(k.dtype), k], dim=2),
                torch.cat([self.v[layer_idx].to(v.dtype), v], dim=2), mask)

    def frames_cached(self, layer_idx):
        if self.valid[layer_idx] is None:
            return 0
        slots, _ = self._spec[layer_idx]
        return int(self.valid[layer_idx].view(slots, -1)[:, 0].sum())
