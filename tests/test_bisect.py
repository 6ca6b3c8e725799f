"""`bisect` and `bisect --walk` on a small git repository whose commits change reference-runner
options (the `reference-options` program stands in for FastVideo), one commit failing to import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parity.errors import UserError

THREE_STEPS = "[1.0, 0.94921875, 0.83984375, 0.0]"
HISTORY = (
    ("baseline", {"reference_options.py": "OPTIONS = {}\n"}),
    ("readme", {"README.md": "options for the reference runner\n"}),
    ("three-step schedule", {"reference_options.py": f"OPTIONS = {{'sigmas': {THREE_STEPS}}}\n"}),
    ("no kv cache", {"reference_options.py": f"OPTIONS = {{'sigmas': {THREE_STEPS}, 'cache_mode': 'none'}}\n"}),
    ("broken import", {"reference_options.py": f"import not_a_module_anywhere\nOPTIONS = {{'sigmas': {THREE_STEPS}}}\n"}),
    ("import repaired", {"reference_options.py": f"OPTIONS = {{'sigmas': {THREE_STEPS}, 'cache_mode': 'none'}}\n"}),
    ("config schedule again", {"reference_options.py": "OPTIONS = {'cache_mode': 'none'}\n"}),
)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def option_repo(tmp_path_factory) -> tuple[Path, list[str]]:
    repo = tmp_path_factory.mktemp("options-repo")
    _git(repo, "init", "-q", "-b", "main")
    shas = []
    for subject, files in HISTORY:
        for name, text in files.items():
            (repo / name).write_text(text)
        _git(repo, "add", "-A")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", subject)
        shas.append(_git(repo, "rev-parse", "HEAD"))
    return repo, shas


@pytest.fixture(scope="module")
def session_args(tmp_path_factory):
    from parity.tiny import make_checkpoint

    root = tmp_path_factory.mktemp("bisect")
    case = root / "two.toml"
    case.write_text(textwrap.dedent("""
        prompt = "a walk in the forest"
        seed = 3
        frames = 2
        [controls]
        buttons = [17]
    """))
    return {"case": case, "snapshot": str(make_checkpoint(root / "ckpt")), "root": root}


@pytest.fixture(scope="module")
def shared_session(option_repo, session_args):
    """One output folder for the module: the upstream capture is made once and every commit is
    tested once; each test's bisect judges the stored rows by its own criterion."""
    from parity.bisect.git import Repo
    from parity.bisect.session import Session, Settings

    out = session_args["root"] / "session"
    out.mkdir()
    return Session.create(Repo.open(option_repo[0]), "reference-options", session_args["case"], out,
                          Settings(snapshot=session_args["snapshot"]), log=lambda s: None)


def _session(shared_session, stage=None):
    from dataclasses import replace

    return replace(shared_session, stage=stage)


def test_walk_lists_every_commit_names_changes_and_the_skipped_one(option_repo, shared_session):
    from parity.bisect.report import table, write_walk
    from parity.bisect.session import walk

    repo, shas = option_repo
    session = _session(shared_session)
    rows = walk(session, f"{shas[0]}..{shas[-1]}")
    assert [r.commit for r in rows] == shas
    by = {r.subject: r for r in rows}
    assert [by[s].verdict for s in ("baseline", "readme", "three-step schedule", "no kv cache", "import repaired",
                                    "config schedule again")] == ["PASS", "PASS", "FAIL", "FAIL", "FAIL", "FAIL"]
    assert by["broken import"].status == "skipped" and "not_a_module_anywhere" in by["broken import"].reason
    assert by["three-step schedule"].first_divergence == "f0/step0.update"
    assert by["three-step schedule"].config["steps"] == 3
    assert by["no kv cache"].config["cache mode"] == "none"
    view = table(rows)
    changed = {item["row"].subject: item["changed"] for item in view["rows"]}
    assert changed["readme"] == []
    assert {"verdict", "first divergence", "sigmas", "steps", "step.sigma"} <= set(changed["three-step schedule"])
    assert "cache mode" in changed["no kv cache"] and "sigmas" not in changed["no kv cache"]
    assert changed["broken import"] == [] and changed["import repaired"] == []  # compared with the last tested row
    assert {"sigmas", "steps"} <= set(changed["config schedule again"])
    paths = write_walk(session.out, rows, {"range": "x..y", "repo": str(repo), "program": "reference-options", "case": "two",
                                            "criterion": "any divergence", "upstream": str(session.upstream)})
    md = paths["md"].read_text()
    assert "SKIP" in md and "not_a_module_anywhere" in md and "f0/step0.update" in md
    assert "three-step schedule" in paths["html"].read_text()
    assert _git(repo, "status", "--porcelain") == "" and len(_git(repo, "worktree", "list").splitlines()) == 1


def test_bisect_finds_the_first_bad_commit_with_the_divergence_before_and_after(option_repo, shared_session):
    from parity.bisect.session import bisect

    repo, shas = option_repo
    head_before = _git(repo, "rev-parse", "HEAD")
    session = _session(shared_session)
    result = bisect(session, good=shas[0], bad=shas[-1])
    assert result.first.sha == shas[2] and result.first.subject == "three-step schedule"
    assert result.before.commit == shas[1] and result.before.first_divergence is None
    assert result.after.first_divergence == "f0/step0.update"
    assert (result.terms.old, result.terms.new) == ("good", "bad")
    assert _git(repo, "rev-parse", "HEAD") == head_before and _git(repo, "status", "--porcelain") == ""
    assert len(_git(repo, "worktree", "list").splitlines()) == 1
    assert "bisect" not in _git(repo, "for-each-ref", "--format=%(refname)")


def test_bisect_with_the_bad_commit_older_finds_the_fix_and_skips_the_broken_commit(option_repo, shared_session):
    from parity.bisect.session import bisect

    repo, shas = option_repo
    session = _session(shared_session, stage="step.sigma")
    result = bisect(session, good=shas[-1], bad=shas[2])
    assert (result.terms.old, result.terms.new) == ("broken", "fixed")
    assert result.first.subject == "config schedule again"
    assert result.before.first_divergence == "f0/step0.update"  # the commit before: still the 3-step schedule
    assert result.criterion.first(result.before).startswith("frame 0, step 1, step.sigma")
    assert result.criterion.first(result.after) is None
    assert [r.subject for r in result.skipped] == ["broken import"]


def test_bisect_refuses_endpoints_that_do_not_differ(option_repo, shared_session):
    from parity.bisect.session import bisect

    repo, shas = option_repo
    session = _session(shared_session)
    with pytest.raises(UserError, match="was given as bad but does not show any divergence"):
        bisect(session, good=shas[0], bad=shas[1])
    with pytest.raises(UserError, match="cannot be tested"):
        bisect(session, good=shas[0], bad=shas[4])


def test_cli_walk_and_bad_arguments(option_repo, session_args, shared_session, tmp_path, capsys):
    from parity.cli import main

    repo, shas = option_repo
    base = ["bisect", str(session_args["case"]), "--repo", str(repo), "--program", "reference-options",
            "--snapshot", session_args["snapshot"], "--device", "cpu", "--out-root", str(tmp_path)]
    assert main(base + ["--walk", f"{shas[0]}..{shas[0]}"]) == 2
    assert "holds no commits" in capsys.readouterr().err
    assert main(base + ["--walk", "nope..main"]) == 2
    assert "unknown commit 'nope'" in capsys.readouterr().err
    assert main(base + ["--bad", shas[2], "--stage", "f0/step9.nothing"]) == 2
    assert "--stage" in capsys.readouterr().err
    assert main(base + ["--bad", shas[2], "--program", "no_such_module:run"]) == 2
    assert not list(tmp_path.iterdir())  # nothing written before the arguments were checked
    assert main(base + ["--walk", f"{shas[1]}..{shas[2]}", "--upstream", str(shared_session.upstream)]) == 0
    out = capsys.readouterr().out
    assert "WALKED: 2 of 2 commits tested" in out
    data = json.loads(next(tmp_path.glob("*/walk.json")).read_text())
    assert [r["verdict"] for r in data["rows"]] == ["PASS", "FAIL"]


def test_import_fixes_fire_only_where_needed(tmp_path, monkeypatch):
    from parity.bisect import import_fixes as fx

    pkg = tmp_path / "fakefv"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "registry.py").write_text(textwrap.dedent("""
        SEEN = []
        def register_configs(sampling, pipeline, workload_types, hf_model_paths=None):
            SEEN.append((pipeline, workload_types))
        def _register():
            register_configs(None, "wan", (1,), hf_model_paths=[])
            register_configs(None, "waypoint")
        _register()
    """))
    (pkg / "models" / "base.py").write_text("class BaseDiT:\n    pass\n")
    (pkg / "models" / "fine.py").write_text("class BaseDiT:\n    pass\nclass CachableDiT(BaseDiT):\n    pass\n")
    fixes = tuple(fx.ImportFix(f.name, f.module.replace("fastvideo", "fakefv").replace(".dits", ""), f.why, f.rewrite, f.patch)
                  for f in fx.FIXES)
    fixes += (fx.ImportFix("CachableDiT alias", "fakefv.models.fine", "", patch=fx.FIXES[1].patch),)
    fixer = fx.Fixer(fixes)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", [fixer] + sys.meta_path)
    try:
        import fakefv.models.base as base
        import fakefv.models.fine as fine
        import fakefv.registry as registry

        assert fixer.applied == ["register_configs workload_types"]  # the alias is not used yet
        assert registry.SEEN == [("wan", (1,)), ("waypoint", ())]
        from fakefv.models.base import CachableDiT

        assert CachableDiT is base.BaseDiT
        assert fine.CachableDiT is not fine.BaseDiT  # present already: left alone
        assert fixer.applied == ["register_configs workload_types", "CachableDiT alias"]
        with pytest.raises(AttributeError):
            base.NotThere
        assert not list(tmp_path.rglob("registry*.pyc"))  # rewritten code is never cached
    finally:
        for name in [m for m in sys.modules if m == "fakefv" or m.startswith("fakefv.")]:
            del sys.modules[name]
