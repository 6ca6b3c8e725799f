"""The git operations bisect needs, on the user's repository, which is only read: each tested commit
gets a detached worktree of its own in a temporary folder, removed afterwards.

    repo = Repo.open("/path/to/FastVideo")
    repo.commits("2e2375dc8", "pr-head")              # first-parent commits of the range, oldest first
    with repo.worktree(sha, paths=("fastvideo", "pyproject.toml")) as tree: ...

`paths` checks out only those paths of the commit (a pathspec checkout into a worktree made with
`--no-checkout`): a user's checkout may be large, or hold blobs that are not on disk (a partial
clone, a mirror without media files). No sparse-checkout config is written into the repository.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from parity.errors import UserError


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str

    @property
    def short(self) -> str:
        return self.sha[:9]


@dataclass(frozen=True)
class Repo:
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> "Repo":
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise UserError("repository not found", path)
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, text=True)
        if out.returncode != 0:
            raise UserError("not a git repository (bisect needs the FastVideo history, not an exported tree)", path)
        return cls(path)

    def git(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        out = subprocess.run(["git", "-C", str(cwd or self.path), *args], capture_output=True, text=True)
        if check and out.returncode != 0:
            raise UserError(f"git {' '.join(args)} failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}", self.path)
        return out.stdout.strip()

    def resolve(self, rev: str) -> str:
        out = subprocess.run(["git", "-C", str(self.path), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise UserError(f"unknown commit {rev!r}", self.path)
        return out.stdout.strip()

    def commit(self, rev: str) -> Commit:
        sha = self.resolve(rev)
        return Commit(sha, self.git("log", "-1", "--format=%s", sha))

    def is_ancestor(self, older: str, newer: str) -> bool:
        return subprocess.run(["git", "-C", str(self.path), "merge-base", "--is-ancestor", older, newer]).returncode == 0

    def commits(self, start: str, end: str, first_parent: bool = True) -> list[Commit]:
        """Commits of `start..end` (start excluded), oldest first."""
        args = ["log", "--reverse", "--format=%H%x09%s"] + (["--first-parent"] if first_parent else []) + [f"{start}..{end}"]
        text = self.git(*args)
        return [Commit(*line.split("\t", 1)) for line in text.splitlines() if line]

    def first_commit_with(self, path: str, end: str) -> Commit:
        """The oldest first-parent ancestor of `end` whose tree has `path`."""
        added = self.git("log", "--first-parent", "--reverse", "--diff-filter=A", "--format=%H", end, "--", path)
        for sha in added.splitlines():
            if self.git("ls-tree", sha, "--", path.rstrip("/")):
                return self.commit(sha)
        raise UserError(f"no commit on the first-parent history of {end} has {path}", self.path)

    @contextlib.contextmanager
    def worktree(self, sha: str, paths: tuple[str, ...] | None = None, parent: Path | None = None) -> Iterator[Path]:
        """A detached worktree of `sha` in a new temporary folder (under `parent`), removed on exit.
        With `paths`, only those paths are checked out (none for `()`)."""
        holder = Path(tempfile.mkdtemp(prefix="wp-bisect-", dir=parent))
        # a unique name: git names the worktree's admin folder after it, and two runs may test one commit
        tree = holder / f"{sha[:12]}-{holder.name.removeprefix('wp-bisect-')}"
        try:
            if paths is not None:
                self.git("worktree", "add", "--detach", "--no-checkout", str(tree), sha)
                present = [p for p in paths if self.git("ls-tree", sha, "--", p.rstrip("/"))]
                if present:
                    self.git("checkout", sha, "--", *present, cwd=tree)
            else:
                self.git("worktree", "add", "--detach", str(tree), sha)
            yield tree
        finally:
            removed = subprocess.run(["git", "-C", str(self.path), "worktree", "remove", "--force", str(tree)],
                                     capture_output=True).returncode == 0
            shutil.rmtree(holder, ignore_errors=True)
            if not removed:  # only then: a prune here could race with another run's worktree being made
                self.git("worktree", "prune", check=False)
