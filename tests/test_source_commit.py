"""Which commit a FastVideo or world_engine tree imported at run time reports (issue 12 item 0):
its own repository's, or its marker file, never the commit of a repository it was copied into."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types

import pytest

from parity.environment import source_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(path, *args) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(path), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture
def outer_repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "x").write_text("x")
    _git(tmp_path, "add", "x")
    _git(tmp_path, "commit", "-qm", "outer")
    return tmp_path


def _package(root, name: str, marker: str | None, commit: str = "c0ffee" * 6 + "abcd"):
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if marker:
        (root / marker).write_text(commit + "\n")
    return pkg


def test_a_tree_inside_another_repository_reports_its_marker(outer_repo):
    outer = _git(outer_repo, "rev-parse", "HEAD")
    tree = outer_repo / "scratch" / "fv"
    _package(tree, "fastvideo", "FASTVIDEO_COMMIT")
    assert source_commit([tree], "FASTVIDEO_COMMIT") == "c0ffee" * 6 + "abcd" != outer
    bare = outer_repo / "scratch" / "bare"
    _package(bare, "fastvideo", None)
    assert source_commit([bare], "FASTVIDEO_COMMIT") is None  # unknown, not the outer commit


def test_a_tree_that_is_its_own_repository_reports_its_head(outer_repo):
    tree = outer_repo / "nested"
    _package(tree, "fastvideo", "FASTVIDEO_COMMIT", commit="stale")
    _git(tree, "init", "-q")
    _git(tree, "add", ".")
    _git(tree, "commit", "-qm", "inner")
    assert source_commit([tree], "FASTVIDEO_COMMIT") == _git(tree, "rev-parse", "HEAD")


def test_fastvideo_and_world_engine_revisions_use_the_tree_not_the_outer_repo(outer_repo, monkeypatch):
    from parity.fastvideo.runner import fastvideo_revision
    from reference.world_engine_code import world_engine_revision

    fv_root = outer_repo / "fv"
    pkg = _package(fv_root, "fastvideo", "FASTVIDEO_COMMIT", commit="f" * 40)
    monkeypatch.setitem(sys.modules, "fastvideo", types.SimpleNamespace(__file__=str(pkg / "__init__.py")))
    assert fastvideo_revision()["commit"] == "f" * 40
    we_root = outer_repo / "world_engine"
    src = _package(we_root, "src", "WORLD_ENGINE_COMMIT", commit="e" * 40)  # the repo's src/ layout
    monkeypatch.setitem(sys.modules, "world_engine", types.SimpleNamespace(__file__=str(src / "__init__.py")))
    assert world_engine_revision()["commit"] == "e" * 40
