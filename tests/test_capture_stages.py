"""The model-boundary stages of capture schema 2 on the reference side (no FastVideo): the KV cache's
logical view, the native-noise rules, timestamps, frame parts, and old captures."""

from __future__ import annotations

import json

import pytest
import torch

from parity.capture import Capture, CapturePolicy, CaptureWriter, StageKey
from parity.compare import FAIL, MISSING_B, PASS, compare_captures
from parity.errors import UserError
from parity.kv_view import KVTracker
from parity.native_noise import NoiseWitness


def _tiny_cache(local=2, global_window=8, dilation=2, layers=2, period=2):
    from parity.tiny.snapshot.before_denoise import StaticKVCache

    cfg = {"n_layers": layers, "global_attn_period": period, "global_pinned_dilation": dilation,
           "global_window": global_window, "local_window": local}
    return StaticKVCache(cfg, 1, torch.float32)


def _pass(cache, tracker, frame, tokens=3, frozen=False):
    """One cache pass of frame `frame` through every layer: keys = frame + layer / 10."""
    tracker.before_pass()
    cache.set_frozen(frozen)
    for layer in range(cache.n_layers):
        k = torch.full((1, 1, tokens, 2), frame + layer / 10)
        cache.upsert(layer, k, -k, torch.tensor([[frame]]))
    cache.set_frozen(True)
    return tracker.after_pass(frame)


def test_kv_view_follows_windows_and_dilation_of_a_ring_cache():
    cache = _tiny_cache()
    tracker = KVTracker(cache, tokens_per_frame=3)
    views = [_pass(cache, tracker, f) for f in range(6)]
    # layer 0 is global (keeps every 2nd frame, 4 of them), layer 1 local (the last 2 frames)
    assert [views[f][0].frames.tolist() for f in range(6)] == [[0], [0], [0, 2], [0, 2], [0, 2, 4], [0, 2, 4]]
    assert [views[f][1].frames.tolist() for f in range(6)] == [[0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]
    # keys come in frame order whatever ring slot holds them
    keys = views[5][1].keys
    assert keys.shape == (1, 1, 6, 2) and keys[0, 0, :3].eq(4.1).all() and keys[0, 0, 3:].eq(5.1).all()
    assert views[5][1].values.eq(-keys).all()


def test_kv_view_of_a_frozen_cache_pass_shows_the_frame_missing():
    cache = _tiny_cache()
    tracker = KVTracker(cache, tokens_per_frame=3)
    _pass(cache, tracker, 0)
    view = _pass(cache, tracker, 1, frozen=True)
    assert view[1].frames.tolist() == [0]


def test_kv_view_of_a_flat_append_cache_and_digests():
    cache = [{"k": torch.zeros(1, 1, 12, 2), "v": torch.zeros(1, 1, 12, 2), "end": 0}]
    tracker = KVTracker(cache, tokens_per_frame=3, digest=True)
    for f in range(3):
        tracker.before_pass()
        cache[0]["k"][:, :, 3 * f:3 * f + 3] = f + 1.0
        cache[0]["end"] += 3
        view = tracker.after_pass(f)
    assert view[0].frames.tolist() == [0, 1, 2]
    assert view[0].keys.shape == (1, 1, 3, 3)  # (B, heads, frames, [mean, rms, projection])
    assert view[0].keys[0, 0, :, 0].tolist() == [1.0, 2.0, 3.0]


def test_noise_witness_names_the_rule_a_draw_follows():
    witness = NoiseWitness(42)
    torch.manual_seed(42)
    for f in range(2):
        assert witness.identify(torch.randn(1, 1, 4, 4, 4), f)["rule"] == "global"
    for f in range(2):
        g = torch.Generator().manual_seed(42 + f)
        note = witness.identify(torch.randn((1, 1, 4, 4, 4), generator=g), f, g)
        assert (note["rule"], note["generator"], note["seed"]) == ("per_frame_generator", "cpu", 42 + f)
    g = torch.Generator().manual_seed(43)
    assert witness.identify(torch.randn((1, 1, 4, 4, 4), generator=g), 0, g)["rule"] is None  # seed + frame + 1
    g = torch.Generator().manual_seed(42)
    torch.randn((1, 1, 4, 4, 4), generator=g)
    assert witness.identify(torch.randn((1, 1, 4, 4, 4), generator=g), 1, g)["rule"] is None  # seeded once, reused


def test_reference_capture_holds_timestamps_and_kv_after_each_cache_pass(small_case, run_side):
    cap = Capture.open(run_side(small_case))
    assert cap.tensor(StageKey(2, 3, "step.timestamp")).tolist() == [[2]]
    assert cap.tensor(StageKey(2, None, "cache_pass.timestamp")).tolist() == [[2]]
    assert float(cap.tensor(StageKey(1, None, "cache_pass.sigma"))) == 0.0
    # the tiny checkpoint: layers 0 and 2 global (dilation 2), 1 and 3 local (window 4)
    assert cap.tensor(StageKey(2, None, "kv.frames", 0)).tolist() == [0, 2]
    assert cap.tensor(StageKey(2, None, "kv.frames", 1)).tolist() == [0, 1, 2]
    assert cap.frame_note(1, "noise.native")["rule"] == "global"
    assert cap.manifest["kv_layout"].startswith("ring")


def test_reference_sides_without_a_cache_pass_are_named_at_frame_0(small_case, run_side):
    a = run_side(small_case, "upstream")
    b = run_side(small_case, "upstream", name="no-pass", options={"cache_pass": False})
    result = compare_captures(Capture.open(a), Capture.open(b))
    first = result.first_divergence
    assert (first.key, first.status) == (StageKey(0, None, "cache_pass.sigma"), MISSING_B)
    assert first.explain() == "frame 0: cache pass missing in B (f0/cache_pass.sigma)"


def test_kv_digest_policy_and_bad_suffix():
    assert CapturePolicy.parse("every:2,kv:digest") == CapturePolicy("every", 2, "digest")
    assert not CapturePolicy.parse("full,kv:off").keeps(0, "kv.keys")
    with pytest.raises(UserError, match="kv:full, kv:digest or kv:off"):
        CapturePolicy.parse("full,kv:some")


def test_frame_parts_and_notes_survive_a_killed_run(tmp_path):
    w = CaptureWriter(tmp_path / "run", {"side": "x"})
    with w.frame(0) as rec:
        rec["noise"] = torch.zeros(1, 1, 2, 2, 2)
        rec.note("noise.native", {"rule": "global"})
    with w.frame(0, part="out") as rec:
        rec["latent"] = torch.ones(1, 1, 2, 2, 2)
    # killed here: the manifest on disk was written before the frames
    cap = Capture.open(tmp_path / "run")
    assert {k.id for k in cap.keys()} == {"f0/noise", "f0/latent"}
    assert cap.tensor(StageKey(0, None, "latent")).eq(1).all()
    assert cap.frame_note(0, "noise.native") == {"rule": "global"}


def test_version_1_captures_open_and_their_missing_stages_are_not_divergences(small_case, run_side):
    a = run_side(small_case)
    old = run_side(small_case, name="old")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["schema_version"] = 1
    manifest["tensors"] = {k: v for k, v in manifest["tensors"].items()
                           if StageKey.from_id(k).family not in ("noise.native", "step.timestamp", "cache_pass.sigma",
                                                                 "cache_pass.timestamp", "kv.frames", "kv.keys", "kv.values",
                                                                 "prompt.native_embedding", "prompt.native_pad_mask")}
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = compare_captures(Capture.open(a), Capture.open(old))
    assert result.passed
    assert {s.status for s in result.stages} <= {PASS, "not sampled"}
    assert FAIL not in {s.status for s in result.stages}


def test_kv_digest_capture_keeps_statistics_per_visible_frame(small_case, tiny_checkpoint, tmp_path):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    out = ReferenceRunner(tiny_checkpoint).run(RunRequest(small_case, "upstream", tmp_path / "digest", capture="full,kv:digest"))
    cap = Capture.open(out)
    assert cap.manifest["capture"]["kv"] == "digest"
    assert cap.tensor(StageKey(2, None, "kv.frames", 1)).tolist() == [0, 1, 2]
    assert tuple(cap.tensor(StageKey(2, None, "kv.keys", 1)).shape) == (1, 2, 3, 3)  # (B, kv heads, frames, stats)
