"""The tiny checkpoint: same bytes from the same seed, found in an HF cache, trusted only as shipped."""

from __future__ import annotations

import hashlib

import pytest

from parity.errors import UserError
from parity.tiny import is_tiny_checkpoint, make_checkpoint


def tree_hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_weights(tiny_checkpoint, tmp_path):
    again = make_checkpoint(tmp_path / "again")
    assert tree_hashes(again) == tree_hashes(tiny_checkpoint)
    other = tree_hashes(make_checkpoint(tmp_path / "other", seed=1))
    same = tree_hashes(tiny_checkpoint)
    assert other["transformer/diffusion_pytorch_model.safetensors"] != same["transformer/diffusion_pytorch_model.safetensors"]
    assert other["transformer/model.py"] == same["transformer/model.py"]


def test_every_parameter_is_random_and_loads_strictly(tiny_checkpoint):
    import torch
    from safetensors.torch import load_file

    state = load_file(tiny_checkpoint / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(t.std() > 0 for t in state.values() if t.numel() > 1)
    assert not any(torch.all(t == 1) or torch.all(t == 0) for t in state.values())


def test_hf_cache_layout_is_found_offline(tmp_path, monkeypatch):
    from huggingface_hub import snapshot_download

    from reference.snapshot import resolve_snapshot

    snap = make_checkpoint(tmp_path / "hub", hf_cache=True)
    assert (tmp_path / "hub" / "models--Overworld--Waypoint-1-Small" / "refs" / "main").read_text() == snap.name
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_snapshot("Overworld/Waypoint-1-Small", cache_dir=str(tmp_path / "hub")) == snap
    assert snapshot_download("Overworld/Waypoint-1-Small", local_files_only=True, cache_dir=str(tmp_path / "hub")) == str(snap)


def test_trust_is_revoked_when_code_changes(tiny_checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    assert is_tiny_checkpoint(copy)
    model = copy / "transformer" / "model.py"
    model.write_text(model.read_text() + "\nimport os  # anything at all\n")
    assert not is_tiny_checkpoint(copy)


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="refusing to write a checkpoint into a non-empty folder"):
        make_checkpoint(tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "x"
