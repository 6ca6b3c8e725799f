"""Shared fixtures: one tiny checkpoint per test session, cases written on the fly, a runner helper."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # CPU timings and results stay stable on 2-core CI machines


def fastvideo_requirements() -> str | None:
    """Why the FastVideo-vs-world_engine tests cannot run here (None when both are available)."""
    from reference.world_engine_code import world_engine_status

    ok, why = world_engine_status()
    if not ok:
        return why
    from parity.fastvideo import fastvideo_src_status

    ok, why = fastvideo_src_status()
    return None if ok else why


def world_engine_or_skip() -> None:
    """Skip the calling test unless world_engine imports (WORLD_ENGINE_SRC or installed)."""
    from reference.world_engine_code import world_engine_status

    ok, why = world_engine_status()
    if not ok:
        pytest.skip(why)


def fastvideo_tree_or_skip(env: str) -> str:
    """The FastVideo source tree the environment variable `env` names (FASTVIDEO_SRC, FASTVIDEO_SRC_640E,
    ...), or skip the calling test."""
    import os

    tree = os.environ.get(env)
    if not tree or not (Path(tree) / "fastvideo" / "__init__.py").is_file():
        pytest.skip(f"{env} does not name a FastVideo source tree")
    return tree


def patch_reference_load(monkeypatch, change) -> None:
    """Plant a bug in the reference side: every model the reference runner loads from now on goes
    through `change(loaded)` (its model, cache class, VAE) before it runs."""
    from reference.runner import ReferenceRunner

    original = ReferenceRunner.load

    def load(self, options, device):
        loaded = original(self, options, device)
        change(loaded)
        return loaded

    monkeypatch.setattr(ReferenceRunner, "load", load)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The built-in random-weight checkpoint, generated once per session."""
    from parity.tiny import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def write_case(tmp_path):
    """write_case(text, name="case") -> Path of a TOML case file holding `text` (dedented)."""

    def write(text: str, name: str = "case") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


SMALL_CASE = """
    prompt = "A first-person gameplay video exploring a stylized world."
    seed = 42
    frames = 3
    [controls]
    buttons = [17]
"""


@pytest.fixture
def small_case(write_case):
    from parity.case import load_case

    return load_case(write_case(SMALL_CASE, "small"))


@pytest.fixture
def run_side(tiny_checkpoint, tmp_path):
    """run_side(case, side="upstream", name=None, **request_fields) -> capture folder."""
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    def run(case, side="upstream", name=None, options=None, prompt_from=None, snapshot=None):
        out = tmp_path / (name or side)
        runner = ReferenceRunner(snapshot or tiny_checkpoint, profile=side)
        return runner.run(RunRequest(case, side, out, "cpu", dict(options or {}), prompt_from))

    return run


pytest_plugins = ["pytester"]


def _hypothesis_profiles():
    import os

    from hypothesis import settings

    # CI must not discover a new counterexample on its own and fail a submission at random:
    # there the examples are derived from the test, the same on every run.
    settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")


_hypothesis_profiles()
