"""The config diff in words: values read per runner, each side's value as a sentence, and which rows
describe what a side *would* do (its design) rather than what this run used.

    value = field_value(manifest, "native noise rule")   # None when the manifest does not record it
    text = words("attention kernel", value)
    kind = row_kind("encoder class", manifest_a, manifest_b)  # "used" or "designed"

Rows of kind `designed` are a side's own design that the alignment policy replaced in this run (its
native noise rule under shared noise; its text encoder under a shared prompt): a difference there is
listed, not marked as a divergence of this run.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from parity.capture import manifest_value, ran_compiled

USED, DESIGNED = "used", "designed"

PROMPT_ROWS = ("encoder class", "encoder dtype", "prompt mask", "prompt source")
"""Rows that describe how a side encodes the prompt: its design only, when the prompt was shared."""


def _noise_used(m: dict) -> Any:
    if manifest_value(m, "alignment.noise") == "shared":
        from parity.alignment import SHARED_NOISE_RULE

        return SHARED_NOISE_RULE
    return manifest_value(m, "protocol.noise_rule")


def _native_noise(m: dict) -> Any:
    recorded = manifest_value(m, "protocol.native_noise_rule")
    if recorded:
        return recorded
    rule = manifest_value(m, "protocol.noise_rule") or ""
    inner = re.search(r"replaces FastVideo's own draw, (.*)\)$", rule)  # FastVideo captures before the field
    if inner:
        return inner.group(1)
    if manifest_value(m, "alignment.noise") != "shared":
        return rule or None
    from parity.native_noise import RULES

    option = manifest_value(m, "options.noise_rule")  # reference captures before the field
    return f"native: {RULES[option]}" if option in RULES else None


def _attention(m: dict) -> Any:
    fastvideo = manifest_value(m, "fastvideo.attention")
    if fastvideo:
        return fastvideo
    backend = manifest_value(m, "options.sdpa_backend")
    if manifest_value(m, "runner.code_source") == "world_engine":
        return (f"world_engine's flex_attention ({'compiled with the model' if ran_compiled(m) else 'uncompiled'})"
                + (f"; SDPA kernel pinned to {backend}" if backend not in (None, "default") else ""))
    if backend is None:
        return None
    return "torch SDPA, torch's kernel choice" if backend == "default" else f"torch SDPA pinned to {backend}"


def _profile(m: dict) -> Any:
    profile = manifest_value(m, "runner.profile")
    if profile:
        source = manifest_value(m, "runner.code_source")
        return f"{profile} profile" + (f", {source} code" if source else "")
    generation = manifest_value(m, "runner.generation") or manifest_value(m, "fastvideo.generation")
    if generation:
        commit = str(manifest_value(m, "fastvideo.commit") or "")
        return f"FastVideo {generation} pipeline" + (f" at {commit[:9]}" if re.fullmatch(r"[0-9a-f]{9,40}", commit) else "")
    return None


DERIVED: dict[str, Callable[[dict], Any]] = {
    "noise used": _noise_used,
    "native noise rule": _native_noise,
    "attention kernel": _attention,
    "profile": _profile,
}
"""Rows whose value is not one manifest path: read per runner (reference and FastVideo record them
in different places)."""


def field_value(manifest: dict, label: str, path: str | None = None) -> Any:
    if label in DERIVED:
        return DERIVED[label](manifest)
    return manifest_value(manifest, path) if path else None


def row_kind(label: str, a: dict, b: dict) -> str:
    shared_noise = all(manifest_value(m, "alignment.noise") == "shared" for m in (a, b))
    shared_prompt = any(str(manifest_value(m, "protocol.prompt_source") or "").startswith("injected") for m in (a, b))
    if label == "native noise rule" and shared_noise:
        return DESIGNED
    if label in PROMPT_ROWS and shared_prompt:
        return DESIGNED
    return USED


def words(label: str, value: Any) -> str:
    """A side's value as it should read in the console and the report: never `None`, never cut."""
    if value is None:
        return "not recorded"
    if label == "weights" and isinstance(value, dict):
        return "; ".join(f"{name} sha256 {digest[:12]}" for name, digest in value.items()) or "no weight files"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.8g}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return "[" + ", ".join(f"{v:.8g}" if isinstance(v, float) else str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {words(k, v)}" for k, v in value.items())
    return str(value)
