"""The prompt of the FastVideo side: the shared one (injected), or FastVideo's own text stage.

`prompt_from` (shared) pre-fills `batch.extra` (head, 640e654f3) or the streaming context
(2e2375dc8); without it the bundle's `text_encoder/` runs through FastVideo's text-encoding stage
(transformers' UMT5EncoderModel in the encoder precision of FastVideo's pipeline config).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from parity import alignment
from parity.errors import UserError
from parity.fastvideo.options import PRECISIONS
from parity.runner import RunRequest


def prepare_prompt(request: RunRequest, bundle: Path, built, device: str):
    import torch

    if request.prompt_from is not None:
        emb, mask = alignment.load_shared_prompt(request.prompt_from)
        return SimpleNamespace(emb=emb, mask=mask, source=f"injected from {request.prompt_from}",
                               encoder_class="UMT5EncoderModel", encoder_dtype=encoder_dtype(built.pc), text_encoder=None,
                               tokenizer=None)
    from transformers import AutoTokenizer, UMT5EncoderModel

    te, tok = bundle / "text_encoder", bundle / "tokenizer"
    if not te.is_dir() or not tok.is_dir():
        raise UserError("native prompt encoding needs text_encoder/ and tokenizer/ in the bundle "
                        "(or share the prompt: [alignment] prompt = \"shared\")", bundle)
    dtype = getattr(torch, encoder_dtype(built.pc))
    encoder = UMT5EncoderModel.from_pretrained(str(te), torch_dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tok))
    return SimpleNamespace(emb=None, mask=None, source="encoded", encoder_class="UMT5EncoderModel",
                           encoder_dtype=encoder_dtype(built.pc), text_encoder=encoder, tokenizer=tokenizer)


def encoder_dtype(pc) -> str:
    precs = list(getattr(pc, "text_encoder_precisions", ()) or ("fp32",))
    return PRECISIONS.get(precs[0], precs[0])

