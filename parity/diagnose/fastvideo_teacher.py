"""Teacher forcing of the FastVideo side: FastVideo's own model fed the reference's exact inputs.

    capture = run_teacher_forced(FastVideoRunner(bundle=...), RunRequest(..., teacher=reference_capture))

The reference runner does its own teacher forcing (`reference.runner`, `parity.diagnose.teacher`);
FastVideo's pipeline cannot be fed inputs step by step, so this drives FastVideo's transformer with
`TransformerCalls` (`FastVideoRunner.transformer_session`), which makes each call the way the
revision's pipeline makes it: its own KV cache (the head's `WaypointKVCache` rings, the older
revisions' flat per-layer cache), its own frozen flag, its own cache pass, its forward context.
Per frame, with T = the teacher capture:

- every denoise call gets T's step input, T's sigma, T's controls, T's prompt and the frame index
  as timestamp; the step update is `x + (s_next - s) * v` in the model dtype (the rule both sides use);
- the cache pass gets T's final latent (so the cache is built from T's trajectory), cache unfrozen
  as the revision does it; its output is taken with a forward hook;
- the decode gets T's final latent, passed to the revision's `vae.decode` as its pipeline passes it
  (head: the latent as is; older revisions: divided by the VAE's scaling factor, shift added).

What stays local to a stage is therefore the model call and the cache as this revision keeps it;
differences in how the pipeline builds the inputs (scroll handling, schedule, noise draw) show in
the free run only. The capture has the usual layout plus `teacher_forced` in its manifest.
"""

from __future__ import annotations

import time
from pathlib import Path

from parity.capture import CaptureWriter, Protocol, StageKey
from parity.errors import UserError
from parity.runner import RunRequest

CONTROLS = ("mouse", "button", "scroll")


def run_teacher_forced(runner, request: RunRequest) -> Path:
    import torch

    from parity.diagnose.teacher import TeacherInputs
    from parity.environment import describe_environment
    from parity.fastvideo.runner import fastvideo_revision

    if request.teacher is None:
        raise UserError("teacher forcing needs a teacher capture")
    case, device = request.case, request.device
    teacher = TeacherInputs.open(request.teacher, case.frames)
    a = teacher.capture
    emb, mask = a.tensor(StageKey(None, None, "prompt.embedding")), a.tensor(StageKey(None, None, "prompt.pad_mask"))
    options = {k: v for k, v in request.options.items() if v is not None}
    with runner.transformer_session(options, device) as fv, torch.no_grad():
        fv.reset(emb, mask, case.frames)
        model_dtype, vae = fv.dtype, fv.built.vae
        vae_dtype = next(vae.parameters()).dtype
        scale, shift = _latent_transform(vae, fv.generation.name)
        writer = CaptureWriter(request.out_dir, header={
            "side": request.side,
            "runner": {"name": "fastvideo", "generation": fv.generation.name},
            "options": options, "case": case.describe(), "seed": case.seed, "device": device,
            "environment": describe_environment(device),
            "model": {"bundle": str(runner._bundle()), "test_model": bool(a.manifest.get("model", {}).get("test_model"))},
            "fastvideo": {**fastvideo_revision(), "generation": fv.generation.name, "attention": fv.attention},
            "teacher_forced": {"teacher": str(request.teacher), "steps": teacher.steps,
                               "inputs": "teacher's step inputs, sigmas, controls, prompt; final latent for the cache pass and decode"},
        })
        writer.record_prompt(fv.prompt_emb, fv.prompt_pad_mask if fv.prompt_pad_mask is not None else mask)
        sigma_dtype = getattr(torch, a.protocol.get("sigma_dtype", "bfloat16"))
        writer.set("protocol", Protocol(
            sigmas=[float(s) for s in teacher.sigmas(0, "cpu", sigma_dtype).float()], sigma_dtype=str(sigma_dtype).removeprefix("torch."),
            steps=teacher.steps, noise_rule=f"teacher-forced from {request.teacher}", noise_dtype=str(model_dtype).removeprefix("torch."),
            encoder_class=a.protocol.get("encoder_class", ""), encoder_dtype=a.protocol.get("encoder_dtype", ""),
            prompt_mask="bool", prompt_source=f"injected from {request.teacher}", model_dtype=str(model_dtype).removeprefix("torch."),
            cache_mode="ring" if fv.generation.name == "stages" else "flat", cache_pass=True,
            vae_dtype=str(vae_dtype).removeprefix("torch."), decode_input_dtype=str(vae_dtype).removeprefix("torch."),
            latent_scale=scale, latent_shift=shift, strict_load=True).describe())
        writer.set("alignment", {"noise": "teacher", "prompt": "shared", "prompt_source": f"injected from {request.teacher}"})
        started = time.perf_counter()
        try:
            for f in range(case.frames):
                _frame(f, fv, teacher, writer, model_dtype, sigma_dtype, vae, vae_dtype, scale, shift, device)
        except UserError:
            writer.close(complete=False)
            raise
        except Exception as exc:
            writer.close(complete=False, error=f"{type(exc).__name__}: {exc}")
            raise UserError(f"teacher-forced FastVideo run failed ({type(exc).__name__}: {exc})") from exc
        writer.close(complete=True, elapsed_s=round(time.perf_counter() - started, 3))
    return request.out_dir


def _frame(f, fv, teacher, writer, model_dtype, sigma_dtype, vae, vae_dtype, scale, shift, device) -> None:
    import torch

    a = teacher.capture
    controls = {n: a.tensor(StageKey(f, None, f"controls.{n}")) for n in CONTROLS}
    sigmas = teacher.sigmas(f, device, sigma_dtype)
    with writer.frame(f) as rec:
        for n, t in controls.items():
            rec[f"controls.{n}"] = t
        rec["noise"] = teacher.noise(f, device, model_dtype)
        for i in range(teacher.steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            x = teacher.step_input(f, i, device, model_dtype)
            v = fv.denoise(x, float(s.float()), f, i, controls)
            rec[f"step{i}.sigma"], rec[f"step{i}.input"], rec[f"step{i}.velocity"] = s, x, v
            rec[f"step{i}.update"] = x + (s_next - s).to(x.dtype) * v.to(x.dtype)
        latent = teacher.latent(f, device, model_dtype)
        rec["latent"] = latent
        seen = []
        hook = fv.model.register_forward_hook(lambda m, args, out: seen.append(out[0] if isinstance(out, (tuple, list)) else out))
        try:
            fv.cache_pass(latent, f, controls)
        finally:
            hook.remove()
        if seen:
            rec["cache_pass.input"], rec["cache_pass.output"] = latent, seen[-1]
        z = latent[:, 0].to(vae_dtype)
        if scale != 1.0:
            z = z / scale
        if shift != 0.0:
            z = z + shift
        out = vae.decode(z)
        rec["decoded"] = out.sample if hasattr(out, "sample") else out


def _latent_transform(vae, generation: str) -> tuple[float, float]:
    """(scale, shift) the revision's decode applies: none at the head; the older pipelines divide by
    the VAE config's scaling factor and add its shift (as `FastVideoRunner` records in its protocol)."""
    if generation == "stages":
        return 1.0, 0.0
    cfg = getattr(vae, "config", None)
    return float(getattr(cfg, "scaling_factor", None) or 1.0), float(getattr(cfg, "shift_factor", None) or 0.0)
