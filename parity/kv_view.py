"""The KV cache after a cache pass, in one logical view whatever the cache's layout.

    tracker = KVTracker(cache, tokens_per_frame=4)
    tracker.before_pass()                      # right before the cache pass
    ...the model's cache pass...
    view = tracker.after_pass(frame=3)         # {layer: LayerView(frames, keys, values)}

Four layouts hold the same thing differently: the tiny snapshot's `StaticKVCache` (one ring buffer per
layer with a validity mask), world_engine's `StaticKVCache` and FastVideo head's `WaypointKVCache`
(per layer a ring of `history` tokens plus a tail slot for the current frame, with a `written`
mask), and the older FastVideo revisions' flat per-layer append cache (`{"k", "v", "end"}` dicts).
None of them records which frame a slot holds, so the tracker learns it by watching: before a
cache pass it fingerprints every frame-sized slot of the history; afterwards each slot whose
contents changed (or that became valid) is labelled with the frame of that pass. The view of a
layer is then the frames it can attend to (labels of the valid slots, ascending) and the keys and
values of those frames, concatenated in that order: `frames (n,)` int64, `keys`/`values`
`(B, heads, n * tokens_per_frame, head_dim)` in the cache's dtype. A frozen cache pass changes
nothing, so its frame never appears; a wrong window or dilation shows as a different frame list at
the pass where it first matters; a wrong value written shows in `keys`/`values`.

`digest=True` (real-size runs) replaces keys and values by per frame and head statistics
`(B, heads, n, 3)`: mean, root mean square, and a fixed pseudo-random projection, in the cache's
dtype so the dtype-aware tolerances still apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KV_FAMILIES = ("kv.frames", "kv.keys", "kv.values")
UNLABELLED = -1
"""Label of a valid slot written before the tracker started (e.g. a seed image's cache pass)."""


@dataclass
class LayerView:
    frames: Any
    keys: Any
    values: Any


def frozen_flag(cache) -> bool | None:
    """The cache's frozen flag as its code keeps it (None when it has none the harness knows)."""
    if isinstance(cache, list) and cache and isinstance(cache[0], dict):
        ref = cache[0].get("frozen_ref")
        return None if ref is None else bool(ref[0])
    for attr in ("is_frozen", "_is_frozen", "frozen"):
        value = getattr(cache, attr, None)
        if isinstance(value, bool):
            return value
    return None


def describe_cache(cache) -> str | None:
    """The layout name of a cache object, None when the harness cannot read it."""
    layout = _layout(cache)
    return None if layout is None else layout.name


class _Layout:
    name = ""

    def __init__(self, cache):
        self.cache = cache

    def layers(self) -> int:
        raise NotImplementedError

    def history(self, layer: int):
        """(k, v, valid) of the layer's history region: k, v (B, H, tokens, D), valid (tokens,) bool;
        None when the layer holds nothing yet."""
        raise NotImplementedError


class _TinyRing(_Layout):
    name = "ring (waypoint-parity tiny StaticKVCache)"

    def layers(self) -> int:
        return self.cache.n_layers

    def history(self, layer):
        if self.cache.k[layer] is None:
            return None
        return self.cache.k[layer], self.cache.v[layer], self.cache.valid[layer]


class _RingWithTail(_Layout):
    """world_engine `StaticKVCache` (layers[i].kv, .written, .L) and FastVideo `WaypointKVCache`
    (layers[i].kv, .written, .history_length): the tail after the history is the current frame."""

    def __init__(self, cache, name):
        super().__init__(cache)
        self.name = name

    def layers(self) -> int:
        return len(self.cache.layers)

    def history(self, layer):
        lay = self.cache.layers[layer]
        length = int(getattr(lay, "L", None) or getattr(lay, "history_length"))
        k, v = lay.kv[0], lay.kv[1]
        return k[:, :, :length], v[:, :, :length], lay.written[:length]


class _Flat(_Layout):
    name = "flat append (FastVideo 640e654f3 / 2e2375dc8)"

    def layers(self) -> int:
        return len(self.cache)

    def history(self, layer):
        import torch

        d = self.cache[layer]
        end = int(d["end"].item() if torch.is_tensor(d["end"]) else d["end"])
        valid = torch.zeros(d["k"].shape[2], dtype=torch.bool, device=d["k"].device)
        valid[:end] = True
        return d["k"], d["v"], valid


def _layout(cache) -> _Layout | None:
    if cache is None:
        return None
    if isinstance(cache, list) and cache and isinstance(cache[0], dict) and {"k", "v", "end"} <= set(cache[0]):
        return _Flat(cache)
    if all(hasattr(cache, a) for a in ("k", "v", "valid", "n_layers")):
        return _TinyRing(cache)
    layers = getattr(cache, "layers", None)
    if layers is not None and len(layers) and all(hasattr(layers[0], a) for a in ("kv", "written")):
        first = layers[0]
        if hasattr(first, "history_length"):
            return _RingWithTail(cache, "ring + tail (FastVideo WaypointKVCache)")
        if hasattr(first, "L"):
            return _RingWithTail(cache, "ring + tail (world_engine StaticKVCache)")
    return None


class KVTracker:
    """Labels every slot of a cache with the frame whose cache pass wrote it (see the module doc)."""

    def __init__(self, cache, tokens_per_frame: int, digest: bool = False):
        self.layout = _layout(cache)
        self.tpf, self.digest = int(tokens_per_frame), digest
        self.labels: dict[int, list[int]] = {}
        self._before: dict[int, Any] = {}

    @property
    def readable(self) -> bool:
        return self.layout is not None

    def _slots(self, layer):
        """(k, v, valid) split into frame-sized slots: k, v (S, B, H, tpf, D), valid (S,) bool."""
        hist = self.layout.history(layer)
        if hist is None:
            return None
        k, v, valid = hist
        slots = k.shape[2] // self.tpf
        n = slots * self.tpf

        def split(t):
            b, h, _, d = t.shape
            return t[:, :, :n].reshape(b, h, slots, self.tpf, d).permute(2, 0, 1, 3, 4)

        return split(k), split(v), valid[:n].reshape(slots, self.tpf).all(dim=1)

    def _fingerprint(self, layer):
        import torch

        s = self._slots(layer)
        if s is None:
            return None
        k, v, valid = s
        kf, vf = k.float().flatten(1), v.float().flatten(1)
        return torch.stack([kf.sum(1), kf.abs().sum(1), vf.sum(1), vf.abs().sum(1), valid.float()], dim=1).cpu()

    def before_pass(self) -> None:
        if self.layout is None:
            return
        self._before = {layer: self._fingerprint(layer) for layer in range(self.layout.layers())}

    def after_pass(self, frame: int) -> dict[int, LayerView]:
        import torch

        if self.layout is None:
            return {}
        out = {}
        for layer in range(self.layout.layers()):
            after = self._fingerprint(layer)
            if after is None:
                continue
            before = self._before.get(layer)
            labels = self.labels.setdefault(layer, [UNLABELLED] * after.shape[0])
            if len(labels) < after.shape[0]:
                labels.extend([UNLABELLED] * (after.shape[0] - len(labels)))
            if isinstance(self.layout, _Flat) and before is not None and _rolled(before, after):
                labels[:] = labels[1:] + [frame]  # full: the oldest frame moved out, this one in at the end
            else:
                for slot in range(after.shape[0]):
                    changed = before is None or slot >= before.shape[0] or not torch.equal(before[slot], after[slot])
                    if changed and after[slot, 4] > 0:
                        labels[slot] = frame
            out[layer] = self._view(layer, labels)
        self._before = {}
        return out

    def _view(self, layer, labels) -> LayerView:
        import torch

        k, v, valid = self._slots(layer)
        order = sorted((labels[s], s) for s in range(len(labels)) if bool(valid[s]))
        idx = torch.tensor([s for _, s in order], dtype=torch.long, device=k.device)
        frames = torch.tensor([f for f, _ in order], dtype=torch.long)

        def gather(t):  # (S, B, H, tpf, D) -> (B, H, n * tpf, D)
            sel = t.index_select(0, idx)
            n, b, h, tpf, d = sel.shape
            return sel.permute(1, 2, 0, 3, 4).reshape(b, h, n * tpf, d)

        keys, values = gather(k), gather(v)
        if self.digest:
            keys, values = kv_digest(keys, len(order)), kv_digest(values, len(order))
        return LayerView(frames, keys, values)


def _rolled(before, after) -> bool:
    """A full flat cache that dropped its oldest frame: every slot now holds what the next one held."""
    import torch

    return bool(before[:, 4].all() and after[:, 4].all() and before.shape == after.shape and before.shape[0] > 1
                and torch.equal(before[1:, :4], after[:-1, :4]))


def kv_capture_bytes(config: dict, itemsize: int, mode: str, frames: int | None = None) -> int:
    """Bytes of one frame's KV stages (`mode` `full`, `digest` or `off`): every layer's visible frames,
    keys and values. With `frames`, the average over a run of that many frames (the rings fill up
    during the first frames); without, a frame with every ring full."""
    if mode == "off":
        return 0
    heads = int(config.get("n_kv_heads") or config["n_heads"])
    head_dim = int(config["d_model"]) // int(config["n_heads"])
    period, offset = int(config["global_attn_period"]), int(config.get("global_attn_offset", 0) or 0)
    dilation = int(config["global_pinned_dilation"])
    per_frame = 3 if mode == "digest" else int(config["tokens_per_frame"]) * head_dim
    at = range(frames) if frames else [None]
    total = 0
    for f in at:
        for layer in range(int(config["n_layers"])):
            is_global = (layer - offset) % period == 0
            slots = int(config["global_window"]) // dilation if is_global else int(config["local_window"])
            visible = slots if f is None else min(slots, (f // dilation if is_global else f) + 1)
            total += 2 * heads * visible * per_frame * itemsize + visible * 8 + 3 * 600
    return total // len(at)


def kv_digest(t, frames: int):
    """(B, H, frames * tpf, D) -> (B, H, frames, 3): mean, rms, fixed projection, in t's dtype."""
    import torch

    b, h, tokens, d = t.shape
    x = t.float().reshape(b, h, frames, (tokens // frames if frames else 0) * d)
    if frames == 0:
        return torch.zeros(b, h, 0, 3, dtype=t.dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    proj = torch.randn(x.shape[-1], generator=gen).to(x.device) / x.shape[-1] ** 0.5
    stats = torch.stack([x.mean(-1), x.pow(2).mean(-1).sqrt(), x @ proj], dim=-1)
    return stats.to(t.dtype)
