"""Writing a FastVideo run in the capture format (`parity.capture`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from parity import alignment
from parity.capture import CaptureWriter, Protocol
from parity.errors import UserError
from parity.fastvideo.generation import Generation
from parity.fastvideo.hooks import Recorder
from parity.runner import RunRequest


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_capture(writer: CaptureWriter, rec: Recorder, request: RunRequest, built, generation: Generation,
                  prompt, started: float) -> None:
    import torch

    case = request.case
    frames = rec.frames()
    if len(frames) != case.frames:
        writer.close(complete=False, error=f"FastVideo produced {len(frames)} frames, the case asks for {case.frames}")
        raise UserError(f"FastVideo produced {len(frames)} frames, the case asks for {case.frames}")
    first = frames[0]["steps"][0] if frames[0]["steps"] else None
    if first is None:
        raise UserError("FastVideo made no transformer call")
    emb, mask = first["prompt_emb"], first["prompt_pad_mask"]
    if mask is None:
        mask = torch.zeros(emb.shape[:2], dtype=torch.bool)
    writer.record_prompt(emb, mask)

    sigmas = [float(s) for s in rec.sigma_tensor.float()]
    native = generation.native_noise
    noise_rule = (f"{alignment.SHARED_NOISE_RULE} (replaces FastVideo's own draw, {native})"
                  if case.alignment.noise == "shared" else native)
    vae_cfg = getattr(built.vae, "config", None)
    if generation.name == "stages":
        scale, shift = 1.0, 0.0  # the head's decoding stage hands batch.latents to vae.decode as they are
    else:
        raw_scale = getattr(vae_cfg, "scaling_factor", None) or 1.0
        raw_shift = getattr(vae_cfg, "shift_factor", None)
        scale, shift = float(raw_scale), float(raw_shift or 0.0)
    cache_kind = "ring" if generation.name == "stages" else "flat"
    protocol = Protocol(
        sigmas=sigmas, sigma_dtype=dtype_name(rec.sigma_dtype), steps=len(sigmas) - 1,
        noise_rule=noise_rule, noise_dtype=dtype_name(rec.noise_dtype),
        encoder_class=prompt.encoder_class, encoder_dtype=prompt.encoder_dtype, prompt_mask="bool",
        prompt_source=prompt.source, model_dtype=model_dtype(built.model),
        cache_mode=cache_kind, cache_pass=any(fr["cache"] is not None for fr in frames),
        vae_dtype=dtype_name(next(built.vae.parameters()).dtype),
        decode_input_dtype=dtype_name(rec.decode_inputs[0].dtype) if rec.decode_inputs else "none",
        latent_scale=scale, latent_shift=shift, strict_load=True, native_noise_rule=native,
    )
    writer.set("protocol", protocol.describe())
    writer.set("alignment", {"noise": case.alignment.noise, "prompt": case.alignment.prompt,
                             "prompt_source": prompt.source,
                             "sigma_override": built.pc.scheduler_sigmas if built.resolved["scheduler_sigmas_source"].startswith("harness") else None})
    for f, fr in enumerate(frames):
        with writer.frame(f) as out:
            s0 = fr["steps"][0]
            out["controls.mouse"], out["controls.button"], out["controls.scroll"] = s0["mouse"], s0["button"], s0["scroll"]
            out["noise"] = rec.noises[f] if f < len(rec.noises) else s0["x"]
            latent = fr["cache"]["x"] if fr["cache"] is not None else batch_latent(rec, f, s0["x"])
            for i, st in enumerate(fr["steps"]):
                nxt = fr["steps"][i + 1]["x"] if i + 1 < len(fr["steps"]) else latent
                out[f"step{i}.sigma"] = st["sigma"].reshape(-1)[0]
                out[f"step{i}.input"], out[f"step{i}.velocity"], out[f"step{i}.update"] = st["x"], st["out"], nxt
            out["latent"] = latent
            if fr["cache"] is not None:
                out["cache_pass.input"], out["cache_pass.output"] = fr["cache"]["x"], fr["cache"]["out"]
            if f < len(rec.decoded):
                out["decoded"] = rec.decoded[f]
    writer.close(complete=True, elapsed_s=round(time.perf_counter() - started, 3))


def model_block(bundle: Path, built) -> dict[str, Any]:
    from parity.tiny.waypoint_arch import read_marker
    from reference import snapshot as snap

    marker = read_marker(bundle)
    return {
        "bundle": str(bundle),
        "revision": snap.snapshot_revision(bundle),
        "test_model": marker is not None,
        "description": "waypoint-parity tiny random-weight model of the real architecture" if marker else "user bundle",
        "weights_sha256": snap.file_hashes(bundle),
        "transformer_config": built.config,
        "load_report": built.load_report,
    }


def model_dtype(model) -> str:
    """The dtype most of the transformer is in (the noise embedding may be kept in fp32)."""
    import collections

    counts = collections.Counter()
    for p in model.parameters():
        counts[p.dtype] += p.numel()
    return dtype_name(counts.most_common(1)[0][0])


def latent_shape(arch) -> tuple[int, int, int, int, int]:
    ph, pw = arch.patch if not isinstance(arch.patch, int) else (arch.patch, arch.patch)
    return (1, 1, int(arch.channels), int(arch.height) * int(ph), int(arch.width) * int(pw))


def batch_latent(rec, f, fallback):
    if rec.batch_latents is not None:
        return rec.batch_latents[:, :, f].unsqueeze(1)
    return fallback



def setup_block(built, attention: str) -> dict[str, Any]:
    """How this side's modules were loaded and run, as the config diff shows it (`setup.summary`)."""
    loader = getattr(built, "loader", None) or "harness direct build (WaypointWorldModel(arch), strict load)"
    compile_ = getattr(built, "compile", None) or "none"
    dtypes = getattr(built, "module_dtypes", None) or {"transformer": model_dtype(built.model),
                                                      "vae": dtype_name(next(built.vae.parameters()).dtype)}
    return {"summary": f"FastVideo {loader}; compile {compile_}; attention {attention}",
            "loader": loader, "compile": compile_, "attention": attention, "module_dtypes": dtypes}
