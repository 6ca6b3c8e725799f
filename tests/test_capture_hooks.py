"""How the FastVideo side tells frames, steps and cache passes apart (`parity.fastvideo.hooks`), on a
stand-in pipeline (no FastVideo needed): frames come from the per-frame noise draw and the pipeline's
own cache-pass signals, never from sigma values."""

from __future__ import annotations

import inspect

import torch

from parity.fastvideo.hooks import Recorder

SHAPE = (1, 1, 2, 2, 2)


class Model(torch.nn.Module):
    def __init__(self, takes_update_cache: bool = True):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        if not takes_update_cache:
            self.forward = self.forward_plain

    def forward(self, x, sigma, frame_timestamp, mouse=None, button=None, scroll=None, kv_cache=None, update_cache=False):
        return x * self.w

    def forward_plain(self, x, sigma, frame_timestamp, mouse=None, button=None, scroll=None, kv_cache=None):
        return x * self.w


class Vae:
    def decode(self, z):
        return torch.zeros(4, 4, 3, dtype=torch.uint8)


def run(model, frames=3, steps=4, cache_pass=True, noise_once=False, extra_step=False, shared=False):
    """A streaming loop in the shape of FastVideo's; returns the frames the recorder saw."""
    seen, late = [], []
    rec = Recorder(42, SHAPE, shared, tokens_per_frame=1, kv_mode="off", on_frame=seen.append,
                   on_decode=lambda *a: late.append(a))
    vae = Vae()
    with rec.installed(model, vae), torch.no_grad():
        x = None
        for f in range(frames):
            if not noise_once or f == 0:
                x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(42 + f))
            ts = torch.full((1, 1), f, dtype=torch.long)
            sigmas = [1.0, 0.75, 0.5, 0.25, 0.0] + ([0.0] if extra_step else [])
            for s, s_next in list(zip(sigmas, sigmas[1:]))[:steps + extra_step]:
                x = x + (s_next - s) * model(x=x, sigma=torch.full((1, 1), s), frame_timestamp=ts)
            if cache_pass:
                kw = {"update_cache": True} if "update_cache" in inspect.signature(model.forward).parameters else {}
                model(x=x, sigma=torch.zeros(1, 1), frame_timestamp=ts, **kw)
            vae.decode(x[:, 0])
        rec.end_frame()
    return seen, late


def test_a_correct_loop_gives_frames_steps_cache_passes_and_decodes():
    seen, late = run(Model())
    assert [len(f.steps) for f in seen] == [4, 4, 4] and all(f.cache is not None for f in seen)
    assert all(f.decoded is not None and f.noise_note["rule"] == "per_frame_generator" for f in seen) and not late
    assert [int(f.steps[0].inputs["frame_timestamp"]) for f in seen] == [0, 1, 2]


def test_no_cache_pass_still_gives_every_frame():
    seen, _ = run(Model(), cache_pass=False)
    assert [len(f.steps) for f in seen] == [4, 4, 4] and all(f.cache is None for f in seen)


def test_an_extra_call_at_sigma_0_is_a_step_not_the_cache_pass():
    seen, _ = run(Model(), extra_step=True)
    assert [len(f.steps) for f in seen] == [5, 5, 5] and all(f.cache is not None for f in seen)
    assert float(seen[0].steps[4].inputs["sigma"]) == 0.0


def test_noise_drawn_once_still_gives_frames_at_the_cache_pass_boundary():
    seen, _ = run(Model(), noise_once=True)
    assert [len(f.steps) for f in seen] == [4, 4, 4]
    assert seen[0].noise is not None and seen[1].noise is None and seen[2].noise is None


def test_without_structural_signals_sigma_0_is_the_fallback():
    seen, _ = run(Model(takes_update_cache=False))
    assert [len(f.steps) for f in seen] == [4, 4, 4] and all(f.cache is not None for f in seen)


def test_shared_noise_replaces_the_draw_but_the_native_one_is_kept():
    from parity import alignment

    seen, _ = run(Model(), shared=True)
    assert torch.equal(seen[1].noise, alignment.shared_noise(42, 1, SHAPE, torch.float32, "cpu"))
    assert torch.equal(seen[1].noise_native, torch.randn(SHAPE, generator=torch.Generator().manual_seed(43)))
    assert torch.equal(seen[1].steps[0].inputs["x"], seen[1].noise)
