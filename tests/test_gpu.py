"""What only a GPU shows: CUDA generators, bf16 CUDA kernels against the CPU, the background writer.

Run on a CUDA machine: `pytest tests -m gpu` (skipped, with the reason, elsewhere).
"""

from __future__ import annotations

import pytest
import torch

from parity.capture import Capture, CaptureWriter, StageKey
from parity.compare import compare_captures

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]


@pytest.fixture
def native_case(write_case):
    from parity.case import load_case

    from tests.conftest import SMALL_CASE

    return load_case(write_case(SMALL_CASE + '[alignment]\nnoise = "native"\n', "native"))


def run(ckpt, case, out, device, side="upstream", **kw):
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    return ReferenceRunner(ckpt, profile=side).run(RunRequest(case, side, out, device, **kw))


def test_cuda_generators_are_deterministic_and_differ_from_the_cpu(tiny_checkpoint, native_case, tmp_path):
    a = Capture.open(run(tiny_checkpoint, native_case, tmp_path / "a", "cuda", side="script"))
    b = Capture.open(run(tiny_checkpoint, native_case, tmp_path / "b", "cuda", side="script"))
    cpu = Capture.open(run(tiny_checkpoint, native_case, tmp_path / "cpu", "cpu", side="script"))
    noise = StageKey(1, None, "noise")
    assert torch.equal(a.tensor(noise), b.tensor(noise))
    assert not torch.equal(a.tensor(noise), cpu.tensor(noise))  # same seed, other stream
    assert a.manifest["protocol"]["noise_rule"] == "native: Generator(device).manual_seed(seed + frame)"


def test_shared_noise_is_the_same_on_cuda_and_cpu(tiny_checkpoint, small_case, tmp_path):
    gpu = run(tiny_checkpoint, small_case, tmp_path / "gpu", "cuda")
    cpu = run(tiny_checkpoint, small_case, tmp_path / "cpu", "cpu", prompt_from=gpu)
    result = compare_captures(Capture.open(cpu), Capture.open(gpu))
    by_id = {s.key.id: s for s in result.stages}
    assert by_id["f0/noise"].metrics.max_abs == 0 and by_id["f2/noise"].metrics.max_abs == 0
    # bf16 kernels differ between devices; the first velocity stays within a few bf16 ulps.
    first_v = by_id["f0/step0.velocity"].metrics
    print(f"cpu vs cuda, f0/step0.velocity rel_l2 {first_v.rel_l2:.3g}, latent f2 rel_l2 {by_id['f2/latent'].metrics.rel_l2:.3g}")
    assert 0 < first_v.rel_l2 < 0.05
    assert Capture.open(gpu).manifest["environment"]["gpu"]


def test_background_writer_on_cuda_matches_the_foreground_copy(tmp_path):
    originals = [torch.randn(1, 1, 16, 32, 32, device="cuda", dtype=torch.bfloat16) for _ in range(6)]
    fg = CaptureWriter(tmp_path / "fg", {"side": "x"})
    bg = CaptureWriter(tmp_path / "bg", {"side": "x"}, background=True)
    for w in (fg, bg):
        for f, t in enumerate(t.clone() for t in originals):
            with w.frame(f) as rec:
                rec["latent"] = t
                rec["decoded"] = (t[0, 0, :3].float().abs() * 50).clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
            t.mul_(2)  # in-place change after the frame: the queued copy must hold the old values
        w.close()
    a, b = Capture.open(tmp_path / "fg"), Capture.open(tmp_path / "bg")
    assert a.manifest["tensors"] == b.manifest["tensors"]


def test_compiled_run_matches_eager_within_bf16(tiny_checkpoint, small_case, tmp_path):
    eager = run(tiny_checkpoint, small_case, tmp_path / "eager", "cuda")
    compiled = run(tiny_checkpoint, small_case, tmp_path / "compiled", "cuda", options={"compile_mode": "default"}, prompt_from=eager)
    result = compare_captures(Capture.open(eager), Capture.open(compiled))
    worst = max(s.metrics.rel_l2 for s in result.stages if s.metrics and s.key.family == "step.velocity")
    print(f"compiled vs eager worst velocity rel_l2 {worst:.3g}; frame times {Capture.open(compiled).manifest['frame_times_s']}")
    assert worst < 0.05
