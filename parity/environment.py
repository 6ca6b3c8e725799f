"""Numerics pinning and the environment block of a manifest."""

from __future__ import annotations

import platform
from importlib import metadata


def pin_numerics(device: str, threads: int | None = None) -> None:
    """Same numerics whatever was imported before: world_engine sets matmul precision to "medium"
    and older FastVideo turns TF32 on at import, so both are pinned here, after imports."""
    import torch

    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if threads:
        torch.set_num_threads(threads)


def describe_environment(device: str) -> dict:
    import torch

    versions = {}
    for package in ("torch", "transformers", "safetensors", "numpy", "huggingface_hub", "ftfy", "scikit-image", "fastvideo"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "libraries": versions,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def default_device() -> str:
    import os

    import torch

    requested = os.environ.get("DEVICE")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def source_commit(roots, marker: str) -> str | None:
    """The commit of a source tree imported at run time (FastVideo, world_engine): `git rev-parse HEAD`
    only when the tree is its own repository (its top level is one of `roots`), else the `marker` file
    an exported tree carries (`FASTVIDEO_COMMIT`, `WORLD_ENGINE_COMMIT`) in one of `roots`. A tree
    copied into another repository would otherwise report that repository's commit."""
    import subprocess
    from pathlib import Path

    roots = [Path(r).resolve() for r in roots]

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(roots[0]), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top and Path(top).resolve() in roots:
        return git("rev-parse", "HEAD")
    for root in roots:
        if (root / marker).is_file():
            return (root / marker).read_text().strip()
    return None
