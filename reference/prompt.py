"""Prompt encoding as each profile does it: tokenise, encode, zero the padded rows.

Upstream: ftfy.fix_text, padding to max_length with truncation, UMT5EncoderModel in bf16, padded rows
of last_hidden_state zeroed with the attention mask, `pad_mask = attention_mask == 0`.
The script: no ftfy, T5EncoderModel (not UMT5) on the same weights in fp32, the mask multiplied as a
float, then cast to bf16. T5EncoderModel drops UMT5's per-layer relative-position biases, so the
two embeddings differ even in fp32.
"""

from __future__ import annotations

from pathlib import Path

from parity.errors import UserError
from reference.options import ReferenceOptions

ENCODER_CLASSES = {"umt5": "UMT5EncoderModel", "t5": "T5EncoderModel"}


def encode_prompt(prompt: str, options: ReferenceOptions, encoder_dir: Path, tokenizer_dir: Path, device: str):
    """-> (embedding (1, L, D) in the model dtype, pad_mask (1, L) bool, True marks padding)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    text = prompt
    if options.prompt_fix_text:
        import ftfy

        text = ftfy.fix_text(text)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:
        raise UserError(f"cannot load tokenizer ({type(exc).__name__}: {exc})", tokenizer_dir) from None
    tokens = tokenizer([text], padding="max_length", max_length=options.prompt_max_length, truncation=True, return_tensors="pt")
    cls = getattr(transformers, ENCODER_CLASSES[options.encoder_class])
    try:
        encoder = cls.from_pretrained(str(encoder_dir))
    except Exception as exc:
        raise UserError(f"cannot load text encoder ({type(exc).__name__}: {exc})", encoder_dir) from None
    encoder = encoder.to(device=device, dtype=getattr(torch, options.encoder_dtype)).eval()
    ids = tokens.input_ids.to(device)
    mask = tokens.attention_mask.to(device)
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    model_dtype = getattr(torch, options.model_dtype)
    if options.mask_multiply == "float":
        emb = (hidden.float() * mask.float()[..., None]).to(model_dtype)
    else:
        emb = (hidden * mask[..., None].to(hidden.dtype)).to(model_dtype)
    del encoder
    return emb, mask == 0
