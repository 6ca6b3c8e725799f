"""The prompt of the FastVideo side: the shared one (injected), and FastVideo's own text stage.

`prompt_from` (shared) pre-fills `batch.extra` (head, 640e654f3) or the streaming context
(2e2375dc8); without it the bundle's `text_encoder/` runs through FastVideo's text-encoding stage
(transformers' UMT5EncoderModel in the encoder precision of FastVideo's pipeline config).

Either way the port's own encoding of the case's prompt is run once (`own_encoding`): the
pipeline's `prompt_encoding_stage` (head) or its `streaming_reset` (older revisions, which encode
there), and kept as the `prompt.native_*` stages, as that stage produced them (FastVideo: fp32).
A bundle without `text_encoder/` cannot do that under a shared prompt; the capture says so and the
native stages are left out (not a divergence).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from parity import alignment
from parity.errors import UserError
from parity.fastvideo.generation import Generation
from parity.fastvideo.options import PRECISIONS
from parity.runner import RunRequest


def prepare_prompt(request: RunRequest, bundle: Path, built, device: str):
    """Namespace: emb/mask (the shared prompt, or None), source, encoder_class, encoder_dtype,
    text_encoder/tokenizer (None when the bundle has none), why_no_encoder."""
    import torch

    te, tok = bundle / "text_encoder", bundle / "tokenizer"
    encoder = tokenizer = why = None
    if te.is_dir() and tok.is_dir():
        from transformers import AutoTokenizer, UMT5EncoderModel

        dtype = getattr(torch, encoder_dtype(built.pc))
        encoder = UMT5EncoderModel.from_pretrained(str(te), torch_dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(tok))
    else:
        why = f"the bundle has no text_encoder/ and tokenizer/ ({bundle})"
    common = dict(encoder_class="UMT5EncoderModel", encoder_dtype=encoder_dtype(built.pc), text_encoder=encoder,
                  tokenizer=tokenizer, why_no_encoder=why)
    if request.prompt_from is not None:
        emb, mask = alignment.load_shared_prompt(request.prompt_from)
        return SimpleNamespace(emb=emb, mask=mask, source=f"injected from {request.prompt_from}", **common)
    if encoder is None:
        raise UserError("native prompt encoding needs text_encoder/ and tokenizer/ in the bundle "
                        "(or share the prompt: [alignment] prompt = \"shared\")", bundle)
    return SimpleNamespace(emb=None, mask=None, source="encoded", **common)


def pipeline_text_modules(prompt, generation: Generation):
    """The text modules the run's pipeline is built with. 2e2375dc8 encodes `batch.prompt` in
    `streaming_reset` whenever it has an encoder, so under a shared prompt it gets none."""
    if prompt.emb is not None and generation.prompt_injection == "context":
        return SimpleNamespace(text_encoder=None, tokenizer=None)
    return prompt


def own_encoding(pipe, args, generation: Generation, prompt, text: str, seed: int):
    """(embedding, pad_mask) as the port's own text stage produces them for `text`; None without an encoder."""
    import torch

    from fastvideo.pipelines.pipeline_batch_info import ForwardBatch

    if prompt.text_encoder is None:
        return None
    fields = dict(data_type="t2v", prompt=text, seed=seed, num_frames=1, extra={})
    known = getattr(ForwardBatch, "__dataclass_fields__", fields)
    batch = ForwardBatch(**{k: v for k, v in fields.items() if k in known})
    with torch.no_grad():
        if generation.name == "stages":
            stage = getattr(pipe, "_stage_name_mapping", {}).get("prompt_encoding_stage")
            if stage is None:
                stage = next(s for s in pipe.stages if hasattr(s, "tokenizer"))
            batch = stage(batch, args)
            return batch.extra["waypoint_prompt_emb"], batch.extra["waypoint_prompt_pad_mask"]
        saved = {k: pipe.modules.get(k) for k in ("text_encoder", "tokenizer")}
        pipe.modules.update(text_encoder=prompt.text_encoder, tokenizer=prompt.tokenizer)
        try:
            pipe.streaming_reset(batch, args)
            ctx = pipe._streaming_ctx
            return ctx.prompt_emb, ctx.prompt_pad_mask
        finally:
            for k, v in saved.items():
                if v is None:
                    pipe.modules.pop(k, None)
                else:
                    pipe.modules[k] = v
            pipe._streaming_ctx = None


def encoder_dtype(pc) -> str:
    precs = list(getattr(pc, "text_encoder_precisions", ()) or ("fp32",))
    return PRECISIONS.get(precs[0], precs[0])
