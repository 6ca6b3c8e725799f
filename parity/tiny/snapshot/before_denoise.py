"""KV cache of the tiny Waypoint-style test model (written by waypoint-parity).

Same protocol as upstream's StaticKVCache: one ring per layer; every `global_attn_period`-th layer
(0, period, ...) is global and keeps frames whose timestamp is a multiple of
`global_pinned_dilation`, `global_window / dilation` of them; the others are local and keep the last
`local_window` frames. While frozen (denoise steps) `upsert` only reads: attention sees the cached
frames plus the current one. Unfrozen (the cache pass) it writes the frame's K/V into the ring.
Frame 0 with an empty cache attends only to itself.
"""

import torch


class _Ring:
    def __init__(self, slots, dilation):
        self.slots, self.dilation = slots, dilation
        self.k = self.v = None
        self.filled = []  # slot indices in write order
        self.next = 0

    def contents(self):
        if not self.filled:
            return None, None
        idx = sorted(self.filled)
        return torch.cat([self.k[i] for i in idx], dim=2), torch.cat([self.v[i] for i in idx], dim=2)

    def write(self, k, v, timestamp):
        if timestamp % self.dilation:
            return False
        if self.k is None:
            self.k = [torch.zeros_like(k) for _ in range(self.slots)]
            self.v = [torch.zeros_like(v) for _ in range(self.slots)]
        self.k[self.next].copy_(k)
        self.v[self.next].copy_(v)
        if self.next not in self.filled:
            self.filled.append(self.next)
        self.next = (self.next + 1) % self.slots
        return True


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
        self.layers = [_Ring(slots, dilation) for slots, dilation in self._spec]

    def set_frozen(self, frozen):
        self.frozen = bool(frozen)

    def upsert(self, layer_idx, k, v, frame_timestamp):
        """k, v (B, kv_heads, N, hd) of the current frame -> the K/V attention should use."""
        ring = self.layers[layer_idx]
        t = int(frame_timestamp.reshape(-1)[0])
        if not self.frozen and ring.write(k.to(self.dtype), v.to(self.dtype), t):
            ck, cv = ring.contents()
            return ck.to(k.dtype), cv.to(v.dtype)
        ck, cv = ring.contents()
        if ck is None:
            return k, v
        return torch.cat([ck.to(k.dtype), k], dim=2), torch.cat([cv.to(v.dtype), v], dim=2)

    def frames_cached(self, layer_idx):
        return len(self.layers[layer_idx].filled)
