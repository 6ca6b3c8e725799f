"""The reference runner: Overworld's own model code, run with the upstream per-frame protocol.

- `options`   every knob of the protocol as a documented field, and the profiles that set them
- `snapshot`  finds a snapshot (folder or Hugging Face cache), checks trust, imports its code,
              loads its weights strictly
- `prompt`    tokenises and encodes the prompt the way each profile does
- `runner`    the per-frame loop (noise, frozen-cache denoise steps, cache pass, decode), captured
"""
