"""The tested program: what runs one commit's side of the case and writes its capture.

Bisect compares every commit's capture with one upstream capture. Which code the commit holds and
how it is run is the program's business:

- `fastvideo` (default): the checkout is a FastVideo tree; FASTVIDEO_SRC points at it, the import
  fixes of `parity.bisect.import_fixes` are installed, and `FastVideoRunner` drives its Waypoint
  pipeline (the generation it finds). A tree that does not import, or whose pipeline generation the
  runner does not drive, is untestable (skipped, listed).
- `reference-options`: the checkout holds `reference_options.py` defining `OPTIONS`, a dict of
  reference-runner option overrides; the upstream profile runs with them. A repository of such
  files stands in for FastVideo where FastVideo is absent (CI).
- `module:function` or `path/to/file.py:function`: your own, called as `function(run: ProgramRun) -> Path`
  (the capture folder); raise `Untestable(reason)` for a commit that cannot be tested.

Every program runs in a process of its own per commit (`parity.bisect.child`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parity.errors import UserError


class Untestable(Exception):
    """This commit cannot be tested (does not import, pipeline not driven, run failed): git bisect skips it."""


@dataclass
class ProgramRun:
    """What a program gets for one commit."""

    checkout: Path
    case_path: Path
    out_dir: Path
    """The capture folder to write (must not exist)."""
    upstream: Path
    """The upstream capture: its prompt embedding is injected (shared prompt)."""
    device: str = "cpu"
    snapshot: str | None = None
    fastvideo_bundle: str | None = None
    code_source: str = "snapshot"
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    """What the program wants recorded in the commit's row (import fixes applied, ...)."""

    def request(self, side: str, options: dict[str, Any] | None = None):
        from parity.case import load_case
        from parity.runner import RunRequest

        case = load_case(self.case_path)
        prompt_from = self.upstream if case.alignment.prompt == "shared" else None
        return RunRequest(case, side, self.out_dir, self.device, dict(options if options is not None else self.options), prompt_from)


@dataclass(frozen=True)
class Program:
    name: str
    run: Callable[[ProgramRun], Path]
    paths: tuple[str, ...] | None = None
    """Paths to check out per commit (None: the whole tree)."""
    exists_at: str | None = None
    """A path whose first appearance is "the first commit where the pipeline exists" (bisect without --good)."""


def run_fastvideo(run: ProgramRun) -> Path:
    from parity.bisect.import_fixes import install

    os.environ["FASTVIDEO_SRC"] = str(run.checkout)
    fixer = install()
    from parity.fastvideo import fastvideo_status

    ok, why = fastvideo_status()
    run.notes["import_fixes"] = fixer.applied
    if not ok:
        raise Untestable(why)
    from parity.fastvideo.runner import FastVideoRunner

    runner = FastVideoRunner(bundle=run.fastvideo_bundle, snapshot=run.snapshot, trust_remote_code=run.trust_remote_code)
    try:
        return runner.run(run.request("fastvideo"))
    except UserError as exc:
        raise Untestable(f"run failed: {exc.one_line()}") from None
    finally:
        run.notes["import_fixes"] = fixer.applied


OPTIONS_FILE = "reference_options.py"


def run_reference_options(run: ProgramRun) -> Path:
    path = run.checkout / OPTIONS_FILE
    if not path.is_file():
        raise Untestable(f"no {OPTIONS_FILE} at this commit")
    spec = importlib.util.spec_from_file_location("reference_options", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        options = dict(module.OPTIONS)
    except Exception as exc:
        raise Untestable(f"{OPTIONS_FILE} does not import ({type(exc).__name__}: {exc})") from None
    from reference.runner import ReferenceRunner

    runner = ReferenceRunner(run.snapshot, profile="upstream", trust_remote_code=run.trust_remote_code, code_source=run.code_source)
    run.notes["options"] = options
    try:
        return runner.run(run.request("upstream", {**run.options, **options}))
    except UserError as exc:
        raise Untestable(f"run failed: {exc.one_line()}") from None


PROGRAMS = {
    "fastvideo": Program("fastvideo", run_fastvideo, paths=("fastvideo", "pyproject.toml"),
                         exists_at="fastvideo/pipelines/basic/waypoint"),
    "reference-options": Program("reference-options", run_reference_options, exists_at=OPTIONS_FILE),
}


def load_program(spec: str) -> Program:
    """A built-in program by name, or `module:function` / `file.py:function`."""
    if spec in PROGRAMS:
        return PROGRAMS[spec]
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UserError(f"--program must be one of {', '.join(PROGRAMS)} or module:function, got {spec!r}")
    try:
        if target.endswith(".py"):
            mod_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
            if mod_spec is None:
                raise FileNotFoundError(target)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        fn = getattr(module, name)
    except Exception as exc:
        raise UserError(f"--program {spec!r} cannot be loaded ({type(exc).__name__}: {exc})") from None
    return Program(spec, fn)
