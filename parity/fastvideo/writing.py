"""Writing a FastVideo run in the capture format (`parity.capture`), frame by frame as frames end.

    frames = FrameWriter(writer, request, built, generation, prompt, latents_from_batch=...)
    recorder = Recorder(..., on_frame=frames.frame_ended, on_decode=frames.late_decode)
    ...
    frames.finish(recorder, complete=True)

A frame is written when it ends (`parity.fastvideo.hooks`): controls, both noises, every denoise
call as it was made, the cache pass and the KV cache after it. The frame's final latent is the one
the pipeline carries out of its denoise loop: the cache pass's input when there was one; the
decode input otherwise (older revisions decode inside the frame loop). The PR head's denoising
stage hands all latents to its decoding stage at the end (`batch.latents`); there the final latent
(and so the last step's update) and the decoded image are written later, as the frame's `out` part
(when the stage raised before handing its latents on, the finished frames' cache-pass inputs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from parity import alignment, native_noise
from parity.capture import CaptureWriter, Protocol
from parity.fastvideo.generation import Generation
from parity.fastvideo.hooks import FrameLog, Recorder
from parity.runner import RunRequest

LATE_PART = "out"


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


class FrameWriter:
    def __init__(self, writer: CaptureWriter, request: RunRequest, built, generation: Generation, prompt,
                 native_prompt, latents_from_batch: bool):
        self.writer, self.request, self.built, self.generation = writer, request, built, generation
        self.prompt, self.native_prompt = prompt, native_prompt
        self.latents_from_batch = latents_from_batch
        self.batch_latents = None
        self.started = time.perf_counter()
        self.recorder: Recorder | None = None
        self._late_done: set[int] = set()
        self._protocol_written = False

    # -- frames ----------------------------------------------------------------------------------
    def frame_ended(self, fr: FrameLog) -> None:
        if not self._protocol_written:
            self._write_run_level()
        final = None if self.latents_from_batch else _final_latent(fr, self.recorder.latent_shape)
        with self.writer.frame(fr.index) as out:
            c = fr.first_call
            if c is not None:
                for name in ("mouse", "button", "scroll"):
                    if c.inputs.get(name) is not None:
                        out[f"controls.{name}"] = c.inputs[name]
            if fr.noise_native is not None:
                out["noise.native"] = fr.noise_native
                out.note(native_noise.NOTE, fr.noise_note)
                # `noise` is what the first step was given (the capture format's definition): a port that
                # changes its draw before denoising is then named at the noise, not one stage later
                given = fr.steps[0].inputs["x"] if fr.steps else None
                out["noise"] = given.reshape(fr.noise.shape) if given is not None and given.numel() == fr.noise.numel() else fr.noise
            for i, st in enumerate(fr.steps):
                nxt = fr.steps[i + 1].inputs["x"] if i + 1 < len(fr.steps) else final
                out[f"step{i}.sigma"] = st.inputs["sigma"].reshape(-1)[0]
                out[f"step{i}.timestamp"] = st.inputs["frame_timestamp"]
                out[f"step{i}.input"], out[f"step{i}.velocity"] = st.inputs["x"], st.out
                if nxt is not None:
                    out[f"step{i}.update"] = nxt
            if final is not None:
                out["latent"] = final
            if fr.cache is not None:
                out["cache_pass.sigma"] = fr.cache.inputs["sigma"].reshape(-1)[0]
                out["cache_pass.timestamp"] = fr.cache.inputs["frame_timestamp"]
                out["cache_pass.input"], out["cache_pass.output"] = fr.cache.inputs["x"], fr.cache.out
                for layer, view in (fr.cache.kv or {}).items():
                    out[f"kv{layer}.frames"], out[f"kv{layer}.keys"], out[f"kv{layer}.values"] = view.frames, view.keys, view.values
            if fr.extra_cache_passes:
                out.note("extra_cache_passes", fr.extra_cache_passes)
            if fr.decoded is not None:
                out["decoded"] = fr.decoded

    def latents_ready(self, latents) -> None:
        """The head's denoising stage returned: `batch.latents` (1, C, T, H, W) holds every frame's final latent."""
        self.batch_latents = latents.detach().clone() if latents is not None else None

    def late_decode(self, index: int, latent, image) -> None:
        """A decode that came after frame `index` ended (the head's decoding stage); a decode for a
        frame the pipeline never generated is only counted (`fastvideo.decodes` in the manifest)."""
        if any(fr.index == index for fr in self.recorder.frames):
            self._late_part(index, image)

    def _late_part(self, index: int, image=None) -> None:
        if index in self._late_done:
            return
        fr = next((f for f in self.recorder.frames if f.index == index), None)
        final = None
        if self.latents_from_batch and self.batch_latents is not None and index < self.batch_latents.shape[2]:
            final = self.batch_latents[:, :, index].unsqueeze(1)
        elif self.latents_from_batch and self.batch_latents is None and fr is not None and fr.cache is not None:
            final = fr.cache.inputs["x"]  # the stage raised before handing its latents on: the latent its cache pass took
        if final is None and image is None:
            return
        self._late_done.add(index)
        with self.writer.frame(index, part=LATE_PART) as out:
            if final is not None:
                if fr is not None and fr.steps:
                    out[f"step{len(fr.steps) - 1}.update"] = final
                out["latent"] = final
            if image is not None:
                out["decoded"] = image

    def finish(self, complete: bool, error: str | None = None) -> None:
        """Late parts of frames that got no decode, the run-level fields, then the manifest."""
        rec = self.recorder
        if not self._protocol_written:
            self._write_run_level()
        for fr in rec.frames:
            if fr is not rec.open:
                self._late_part(fr.index)
        self.writer.set("protocol", self._protocol().describe())
        if rec.kv_layout is not None or rec._tracker is not None:
            self.writer.set("kv_layout", rec.kv_layout)
        fv = dict(self.writer.manifest.get("fastvideo") or {})
        fv.update(model_calls=rec.calls, frames_seen=len(rec.frames), decodes=rec.decodes, cache_pass_signal=rec.cache_signal)
        self.writer.set("fastvideo", fv)
        extra = {"elapsed_s": round(time.perf_counter() - self.started, 3)}
        if error is not None:
            extra["error"] = error
        self.writer.close(complete=complete, **extra)

    # -- run-level -------------------------------------------------------------------------------
    def _write_run_level(self) -> None:
        import torch

        self._protocol_written = True
        rec = self.recorder
        if rec.prompt is not None and rec.prompt[0] is not None:
            emb, mask = rec.prompt
            if mask is None:
                mask = torch.zeros(emb.shape[:2], dtype=torch.bool)
            self.writer.record_prompt(emb, mask, native=self.native_prompt)
        self.writer.set("protocol", self._protocol().describe())

    def _protocol(self) -> Protocol:
        import torch

        case, built, rec = self.request.case, self.built, self.recorder
        first = next((fr.first_call for fr in rec.frames if fr.first_call is not None), None)
        sigma_dtype = first.inputs["sigma"].dtype if first is not None else next(built.model.parameters()).dtype
        sigmas = [float(s) for s in torch.tensor(built.pc.scheduler_sigmas, dtype=sigma_dtype).float()]
        noises = [fr for fr in rec.frames if fr.noise_native is not None]
        native = native_noise.summary([fr.noise_note for fr in noises])
        noise_rule = (f"{alignment.SHARED_NOISE_RULE} (replaces FastVideo's own draw)" if case.alignment.noise == "shared"
                      else f"native: {native}")
        vae_cfg = getattr(built.vae, "config", None)
        if self.generation.name == "stages":
            scale, shift = 1.0, 0.0  # the head's decoding stage hands batch.latents to vae.decode as they are
        else:
            scale = float(getattr(vae_cfg, "scaling_factor", None) or 1.0)
            shift = float(getattr(vae_cfg, "shift_factor", None) or 0.0)
        decode_inputs = [fr.decode_input for fr in rec.frames if fr.decode_input is not None]
        return Protocol(
            sigmas=sigmas, sigma_dtype=dtype_name(sigma_dtype), steps=len(sigmas) - 1,
            noise_rule=noise_rule, noise_dtype=dtype_name(noises[0].noise_native.dtype) if noises else "none",
            encoder_class=self.prompt.encoder_class, encoder_dtype=self.prompt.encoder_dtype, prompt_mask="bool",
            prompt_source=self.prompt.source, model_dtype=model_dtype(built.model),
            cache_mode="ring" if self.generation.name == "stages" else "flat",
            cache_pass=any(fr.cache is not None for fr in rec.frames),
            vae_dtype=dtype_name(next(built.vae.parameters()).dtype),
            decode_input_dtype=dtype_name(decode_inputs[0].dtype) if decode_inputs else dtype_name(next(built.vae.parameters()).dtype),
            latent_scale=scale, latent_shift=shift, strict_load=True, native_noise_rule=native,
        )


def _final_latent(fr: FrameLog, latent_shape):
    if fr.cache is not None:
        return fr.cache.inputs["x"]
    if fr.decode_input is not None:
        return fr.decode_input.reshape(latent_shape)
    return None


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


def setup_block(built, attention: str) -> dict[str, Any]:
    """How this side's modules were loaded and run, as the config diff shows it (`setup.summary`)."""
    loader = getattr(built, "loader", None) or "harness direct build (WaypointWorldModel(arch), strict load)"
    compile_ = getattr(built, "compile", None) or "none"
    dtypes = getattr(built, "module_dtypes", None) or {"transformer": model_dtype(built.model),
                                                      "vae": dtype_name(next(built.vae.parameters()).dtype)}
    if attention == "FastVideo default" and getattr(built, "attention_detail", None):
        attention = f"FastVideo default: {built.attention_detail}"
    short = "FastVideo's own loader" if getattr(built, "pipe", None) is not None else "harness direct build"
    return {"summary": f"{short}; compile {compile_}; attention {attention}",
            "loader": loader, "loader_choice": getattr(built, "loader_choice", None), "compile": compile_,
            "attention": attention, "module_dtypes": dtypes, "offload": getattr(built, "offload", None)}
