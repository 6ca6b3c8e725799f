"""Finding, trusting and loading an Overworld snapshot.

    snap = resolve_snapshot("Overworld/Waypoint-1-Small")   # HF cache, offline; or a folder path
    check_layout(snap)                                        # every file the protocol needs
    require_trust(snap, trust=args.trust_remote_code)        # the snapshot's .py files run only if trusted
    loaded = load_snapshot(snap, options, device)            # model, VAE, cache class, config, load report

Trust is explicit: `--trust-remote-code` or WAYPOINT_PARITY_TRUST_REMOTE_CODE=1. The built-in tiny
checkpoint is trusted when its code files are byte-identical to the ones this package ships.
Weights load only from safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import UserError
from parity.tiny import is_tiny_checkpoint

TRUST_ENV = "WAYPOINT_PARITY_TRUST_REMOTE_CODE"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files that are never opened: loading them means unpickling, which can run code."""
REQUIRED = (
    "transformer/config.json",
    "transformer/model.py",
    "before_denoise.py",
    "vae/config.json",
)


def resolve_snapshot(spec: str | Path, cache_dir: str | None = None) -> Path:
    """A folder path, or a repo id looked up in the Hugging Face cache without network."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    text = str(spec)
    if path.exists():
        raise UserError("snapshot path is not a folder", path)
    if text.count("/") != 1 or text.startswith((".", "/")):
        raise UserError("snapshot folder not found (and it is not an Org/Name repo id)", path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # LocalEntryNotFoundError and friends; the message is what matters
        raise UserError(
            f"repo {text!r} is not in the Hugging Face cache (offline lookup failed: {type(exc).__name__}); "
            "download it on a networked machine or pass a folder", cache_dir or os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub"),
        ) from None


def check_layout(snapshot: Path) -> None:
    for rel in REQUIRED:
        if not (snapshot / rel).is_file():
            raise UserError(f"incomplete snapshot: {rel} is missing", snapshot)
    for folder in ("transformer", "vae"):
        if not list((snapshot / folder).glob("*.safetensors")):
            pickled = sorted(p.name for p in (snapshot / folder).iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickled:
                raise UserError(f"{folder}/ holds only pickled weights ({', '.join(pickled)}); waypoint-parity loads safetensors "
                                "only, since unpickling can run arbitrary code: convert them to safetensors first", snapshot)
            raise UserError(f"incomplete snapshot: no {folder}/*.safetensors (pickled weights are not loaded)", snapshot)
    if not list((snapshot / "vae").glob("*.py")):
        raise UserError("incomplete snapshot: vae/ holds no model code", snapshot)


def is_trusted(snapshot: Path, trust: bool = False) -> tuple[bool, str]:
    """Whether the snapshot's Python may run, and why (recorded in the manifest)."""
    if is_tiny_checkpoint(snapshot):
        return True, "built-in tiny checkpoint (code identical to waypoint-parity's own)"
    if trust:
        return True, "--trust-remote-code"
    if os.environ.get(TRUST_ENV) == "1":
        return True, f"{TRUST_ENV}=1"
    return False, "not trusted"


def require_trust(snapshot: Path, trust: bool = False) -> str:
    ok, why = is_trusted(snapshot, trust)
    if not ok:
        raise UserError(
            f"snapshot code is not trusted: it would run transformer/model.py and friends from this folder; "
            f"pass --trust-remote-code or set {TRUST_ENV}=1 if you trust it", snapshot,
        )
    return why


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", path)
    return data


def import_file(path: Path, name: str):
    """Import one .py file from a snapshot under a private module name (never on sys.path)."""
    module_name = f"_waypoint_snapshot_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserError(f"snapshot code failed to import ({type(exc).__name__}: {exc})", path) from None
    return module


def load_safetensors_folder(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            part = load_file(file)
        except Exception as exc:
            raise UserError(f"cannot read weights ({type(exc).__name__}: {exc})", file) from None
        overlap = set(part) & set(state)
        if overlap:
            raise UserError(f"tensor {sorted(overlap)[0]!r} appears in more than one weight file", file)
        state.update(part)
    return state


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("shape-mismatched", self.mismatched)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
        return "; ".join(parts)


def load_weights(module, folder: Path, strict: bool, what: str) -> LoadReport:
    """Load every *.safetensors in `folder` into `module`; strict raises on any mismatch, non-strict
    loads what fits and reports the rest (the script's behaviour, made visible)."""
    state = load_safetensors_folder(folder)
    own = module.state_dict()
    report = LoadReport(
        missing=sorted(set(own) - set(state)),
        unexpected=sorted(set(state) - set(own)),
        mismatched=sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)),
    )
    if strict and not report.clean:
        raise UserError(f"{what} weights do not load strictly: {report.summary()}", folder)
    fitting = {k: v for k, v in state.items() if k in own and k not in report.mismatched}
    module.load_state_dict(fitting, strict=False)
    return report


def file_hashes(snapshot: Path, folders=("transformer", "vae", "text_encoder")) -> dict[str, str]:
    """sha256 of every weight file, for the manifest."""
    out = {}
    for folder in folders:
        for file in sorted((snapshot / folder).glob("*.safetensors")):
            h = hashlib.sha256()
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            out[str(file.relative_to(snapshot))] = h.hexdigest()
    return out


def snapshot_revision(snapshot: Path) -> str | None:
    """The commit hash when the folder sits in a Hugging Face cache (`.../snapshots/<rev>`)."""
    return snapshot.name if snapshot.parent.name == "snapshots" else None
