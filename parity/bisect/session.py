"""Testing commits: one upstream capture, then each commit in a worktree and a process of its own.

    session = Session.create(repo, "fastvideo", case_path, out, settings, stage=None)   # runs upstream once
    rows = walk(session, "2e2375dc8..pr-head")                 # every first-parent commit, oldest first
    result = bisect(session, good="pr-head", bad="2e2375dc8")   # reversed terms: looks for the fix

`bisect` runs `git bisect run` in a worktree of its own with `--no-checkout` (the bisect state is
that worktree's; the user's checkout and its own bisect, if any, are left alone) and
`parity.bisect.step` as the test: it tests `BISECT_HEAD` and exits 0 (old), 1 (new) or 125 (skip).
Rows are kept per commit under `out/commits/<sha>/row.json`, so a commit is tested once per output
folder; a row keeps every failing stage, so any `--stage` criterion is judged from it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import parity
from parity.bisect.git import Commit, Repo
from parity.bisect.outcome import SKIPPED, TESTED, CommitRow, Criterion
from parity.bisect.programs import load_program
from parity.errors import UserError

SESSION = "session.json"


@dataclass
class Settings:
    """How each side is run (the model arguments of the CLI)."""

    device: str = "cpu"
    snapshot: str | None = None
    fastvideo_bundle: str | None = None
    code_source: str = "snapshot"
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """Option overrides for every tested commit's side (e.g. precision=fp32 for FastVideo)."""


@dataclass
class Session:
    repo: Path
    program: str
    case_path: Path
    upstream: Path
    out: Path
    settings: Settings
    stage: str | None = None
    python: str = sys.executable
    log: Callable[[str], None] = field(default=print, repr=False, compare=False)

    @classmethod
    def create(cls, repo: Repo, program: str, case_path: Path, out: Path, settings: Settings, stage: str | None = None,
               upstream: Path | None = None, upstream_options: dict | None = None, log=print) -> "Session":
        """Validates everything, then makes the upstream capture once (or takes `upstream`)."""
        from parity.case import load_case

        load_program(program)
        Criterion.parse(stage)
        case = load_case(case_path)
        if upstream is None:
            from parity.runner import RunRequest
            from parity.suite import SideConfig

            upstream = out / "upstream"
            log(f"upstream capture (made once): {upstream}")
            sides = SideConfig(snapshot=settings.snapshot, trust_remote_code=settings.trust_remote_code,
                               fastvideo_bundle=settings.fastvideo_bundle, code_source=settings.code_source, device=settings.device)
            sides.runner("upstream").run(RunRequest(case, "upstream", upstream, settings.device, dict(upstream_options or {})))
        elif not (Path(upstream) / "manifest.json").is_file():
            raise UserError("not a capture (no manifest.json)", upstream)
        session = cls(repo.path, program, Path(case_path).resolve(), Path(upstream).resolve(), out.resolve(), settings, stage, log=log)
        session.save()
        return session

    def save(self) -> Path:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k != "log"}
        path = self.out / SESSION
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "Session":
        data = json.loads(path.read_text())
        data["settings"] = Settings(**data["settings"])
        for k in ("repo", "case_path", "upstream", "out"):
            data[k] = Path(data[k])
        return cls(**data)

    @property
    def criterion(self) -> Criterion:
        return Criterion.parse(self.stage)

    def row(self, sha: str) -> CommitRow | None:
        path = self.out / "commits" / sha / "row.json"
        return CommitRow.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def test(self, commit: Commit) -> CommitRow:
        """Test one commit (once per session): its own worktree, its own process."""
        cached = self.row(commit.sha)
        if cached is not None:
            return cached
        folder = self.out / "commits" / commit.sha
        folder.mkdir(parents=True, exist_ok=True)
        program = load_program(self.program)
        repo = Repo(self.repo)
        started = time.perf_counter()
        with repo.worktree(commit.sha, program.paths) as tree:
            run = {"checkout": str(tree), "case_path": str(self.case_path), "out_dir": str(folder / "capture"),
                   "upstream": str(self.upstream), **asdict(self.settings)}
            spec = {"program": self.program, "commit": commit.sha, "subject": commit.subject, "run": run}
            (folder / "spec.json").write_text(json.dumps(spec, indent=1))
            env = _child_env()
            env.pop("FASTVIDEO_SRC", None)  # the program points it at this commit's tree
            with open(folder / "log.txt", "w") as log:
                proc = subprocess.run([self.python, "-m", "parity.bisect.child", str(folder / "spec.json"), str(folder / "row.json")],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.out))
        text = (folder / "log.txt").read_text(errors="replace").strip().splitlines()
        if proc.returncode == 2 and text and text[-1].startswith("waypoint-parity bisect: error:"):
            raise UserError(f"testing {commit.short}: {text[-1].split('error: ', 1)[1]}")
        row = self.row(commit.sha)
        if row is None:
            row = CommitRow(commit.sha, commit.subject, SKIPPED,
                            reason=f"crashed (exit {proc.returncode}): {text[-1] if text else 'no output'}")
            row.seconds = round(time.perf_counter() - started, 1)
            (folder / "row.json").write_text(json.dumps(row.to_dict(), indent=1))
        self.log(_one_line(row))
        return row


def _child_env() -> dict[str, str]:
    """This environment, with this `parity` first on the path of the processes it starts."""
    env = dict(os.environ)
    root = str(Path(parity.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _one_line(row: CommitRow) -> str:
    if row.status != TESTED:
        return f"  {row.short} {row.subject[:50]!r}: skipped ({row.reason})"
    return f"  {row.short} {row.subject[:50]!r}: {row.verdict}, first divergence {row.first_divergence or 'none'} ({row.seconds} s)"


# -- walk -----------------------------------------------------------------------------------------

def parse_range(text: str) -> tuple[str, str]:
    if ".." not in text or "..." in text:
        raise UserError(f"--walk takes A..B (two commits), got {text!r}")
    a, b = text.split("..", 1)
    if not a or not b:
        raise UserError(f"--walk takes A..B (two commits), got {text!r}")
    return a, b


def walk_commits(repo: Repo, range_text: str, every: int = 1, first_parent: bool = True) -> list[Commit]:
    """A, then every (or every Nth) commit of A..B, oldest first; B is always included."""
    if every < 1:
        raise UserError(f"--every must be at least 1, got {every}")
    a, b = parse_range(range_text)
    base = repo.commit(a)
    repo.resolve(b)
    commits = repo.commits(base.sha, b, first_parent)
    if not commits:
        raise UserError(f"{range_text} holds no commits (is {a} an ancestor of {b}?)", repo.path)
    picked = commits[every - 1::every]
    if picked[-1:] != commits[-1:]:
        picked.append(commits[-1])
    return [base] + picked


def walk(session: Session, range_text: str, every: int = 1, first_parent: bool = True) -> list[CommitRow]:
    commits = walk_commits(Repo(session.repo), range_text, every, first_parent)
    session.log(f"walking {len(commits)} commits ({range_text}, {'first parent' if first_parent else 'all parents'}"
                + (f", every {every}" if every > 1 else "") + ")")
    return [session.test(c) for c in commits]


# -- bisect ---------------------------------------------------------------------------------------

@dataclass
class Terms:
    old: str
    new: str
    """git's terms: `good`/`bad`, or `broken`/`fixed` when the bad commit is the older one."""

    @property
    def reversed(self) -> bool:
        return self.old != "good"

    def label(self, failed: bool) -> str:
        """The term a commit whose criterion `failed` gets."""
        if self.reversed:
            return self.old if failed else self.new
        return self.new if failed else self.old


@dataclass
class BisectResult:
    first: Commit | None
    """The first `terms.new` commit (the first bad one, or with reversed terms the first fixed one)."""
    terms: Terms
    old: Commit
    new: Commit
    criterion: Criterion
    rows: list[CommitRow]
    """Every tested commit, in the order bisect tested them."""
    before: CommitRow | None = None
    """The last old commit before `first` (its first-parent parent when that was testable)."""
    after: CommitRow | None = None
    candidates: list[str] = field(default_factory=list)
    """When skipped commits leave it open: the commits the first new one could be."""
    log: str = ""

    @property
    def skipped(self) -> list[CommitRow]:
        return [r for r in self.rows if r.status != TESTED]


def bisect(session: Session, good: str | None, bad: str) -> BisectResult:
    repo = Repo(session.repo)
    program = load_program(session.program)
    bad_c = repo.commit(bad)
    if good is None:
        if not program.exists_at:
            raise UserError(f"program {session.program} names no path to find its first commit by; pass --good")
        good_c = repo.first_commit_with(program.exists_at, bad_c.sha)
        session.log(f"good: the first commit where {program.exists_at} exists, {good_c.short} {good_c.subject!r}")
    else:
        good_c = repo.commit(good)
    if good_c.sha == bad_c.sha:
        raise UserError("--good and --bad are the same commit")
    if repo.is_ancestor(good_c.sha, bad_c.sha):
        terms, old, new = Terms("good", "bad"), good_c, bad_c
    elif repo.is_ancestor(bad_c.sha, good_c.sha):
        terms, old, new = Terms("broken", "fixed"), bad_c, good_c
        session.log(f"the bad commit is the older one: looking for the first commit that fixed it ({terms.old}/{terms.new})")
    else:
        raise UserError(f"{good_c.short} and {bad_c.short} are not on one line of history (neither is an ancestor of the other)")
    criterion = session.criterion
    for commit, want in ((old, terms.old), (new, terms.new)):
        row = session.test(commit)
        if row.status != TESTED:
            raise UserError(f"{commit.short} cannot be tested, so it cannot bound the bisect: {row.reason}")
        failed = criterion.failed(row)
        if terms.label(failed) != want:
            raise UserError(f"{commit.short} was given as {'good' if want in ('good', 'fixed') else 'bad'} but "
                            f"{'shows' if failed else 'does not show'} {criterion.describe()} "
                            f"(first divergence {row.first_divergence or 'none'})")
    session.save()
    with repo.worktree(new.sha, paths=()) as tree:
        repo.git("bisect", "start", "--no-checkout", "--first-parent", f"--term-old={terms.old}", f"--term-new={terms.new}",
                 new.sha, old.sha, cwd=tree)
        step = [session.python, "-m", "parity.bisect.step", str(session.out / SESSION), terms.old, terms.new]
        env = _child_env()
        # stdout is git's (parsed below); each step's progress line goes to stderr, straight through
        proc = subprocess.run(["git", "-C", str(tree), "bisect", "run", *step], stdout=subprocess.PIPE, text=True, env=env)
        log = repo.git("bisect", "log", cwd=tree, check=False)
        repo.git("bisect", "reset", cwd=tree, check=False)
    (session.out / "git-bisect.txt").write_text(proc.stdout)
    found = re.search(rf"^([0-9a-f]{{40}}) is the first {re.escape(terms.new)} commit", proc.stdout, re.M)
    candidates = re.findall(r"^([0-9a-f]{40})$", proc.stdout, re.M) if "only 'skip'ped commits left" in proc.stdout else []
    if found is None and not candidates:
        tail = proc.stdout.strip().splitlines()[-3:]
        raise UserError(f"git bisect run did not finish: {' / '.join(tail)}", session.out / "git-bisect.txt")
    tested = _bisect_order(log)
    rows = [r for r in (session.row(sha) for sha in [old.sha, new.sha] + tested) if r is not None]
    for r in rows:
        if r.status == TESTED:
            r.label = terms.label(criterion.failed(r))
    result = BisectResult(repo.commit(found.group(1)) if found else None, terms, old, new, criterion, rows,
                          candidates=candidates, log=log)
    if result.first is not None:
        result.after = session.row(result.first.sha)
        result.before = _before(session, repo, result.first, terms)
    return result


def _bisect_order(log: str) -> list[str]:
    """Commits in the order `git bisect log` records a verdict for them (after the two endpoints)."""
    out = []
    for line in log.splitlines():
        m = re.match(r"^git bisect \S+ ([0-9a-f]{40})$", line)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def _before(session: Session, repo: Repo, first: Commit, terms: Terms) -> CommitRow | None:
    parent = repo.commit(f"{first.sha}^1")
    row = session.test(parent)
    if row.status == TESTED:
        row.label = terms.label(session.criterion.failed(row))
        return row
    return None
