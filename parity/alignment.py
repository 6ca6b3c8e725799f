"""Inputs both sides share, so that any difference left is the pipelines' own.

Noise, `shared` policy: the harness draws frame f's noise once, at its exact shape, from a CPU
generator seeded `seed + f`, in fp32, rounded to the side's noise dtype, then moved to the device.
A CPU generator gives the same stream on every machine (CUDA's does not), and drawing at the exact
shape avoids the `randn(n)[:k] != randn(k)` trap. `native` lets each side follow its own rule.

Prompt, `shared` policy: side A encodes, side B receives A's embedding and pad mask from A's
capture (`prompt_from`), exactly as stored, cast to B's model dtype.
"""

from __future__ import annotations

from pathlib import Path

SHARED_NOISE_RULE = "shared: cpu Generator.manual_seed(seed + frame), fp32 randn at the exact shape, rounded"


def shared_noise(seed: int, frame: int, shape, dtype, device):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed + frame)
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(dtype).to(device)


def load_shared_prompt(capture_dir: Path):
    """(embedding, pad_mask) from another side's capture, validated like any stored capture."""
    from parity.capture import Capture, StageKey

    cap = Capture.open(capture_dir)
    return cap.tensor(StageKey(None, None, "prompt.embedding")), cap.tensor(StageKey(None, None, "prompt.pad_mask"))
