"""Parity as a pytest suite: one test item per case, pair and stage family.

    pytest --parity cases/                                  # built-in tiny checkpoint, CPU
    pytest --parity cases/ --parity-snapshot Overworld/Waypoint-1-Small --parity-trust-remote-code \\
           --parity-device cuda --junitxml parity.xml       # GPU CI with real weights

Items are named `cases/seed-official.toml::upstream-vs-script::denoise`, so a JUnit report shows
which case and which stage broke parity; the failure message is the first divergence of that
family with its numbers and tolerance. Both sides of a case run once, on the first item that needs
them. Without `--parity`, TOML files are not collected (the project's own unit tests stay separate).
"""

from __future__ import annotations

from pathlib import Path

import pytest

GROUPS = {
    "prompt": ("prompt.embedding", "prompt.pad_mask"),
    "controls": ("controls.mouse", "controls.button", "controls.scroll"),
    "noise": ("noise",),
    "denoise": ("step.sigma", "step.input", "step.velocity", "step.update"),
    "latent": ("latent",),
    "cache_pass": ("cache_pass.input", "cache_pass.output"),
    "decoded": ("decoded",),
}
"""Test item per stage group; each group is a few stage families (see parity.tolerances.FAMILIES)."""


def pytest_addoption(parser):
    g = parser.getgroup("waypoint-parity")
    g.addoption("--parity", action="store_true", help="collect cases/*.toml as parity tests")
    g.addoption("--parity-snapshot", help="Overworld snapshot folder or repo id (default: built-in tiny checkpoint)")
    g.addoption("--parity-trust-remote-code", action="store_true", help="let the snapshot's own code run")
    g.addoption("--parity-text-encoder", help="UMT5 folder or repo id when the snapshot has none")
    g.addoption("--parity-bundle", help="FastVideo bundle folder or repo id")
    g.addoption("--parity-device", help="cpu, cuda, cuda:N (default: $DEVICE, else cuda when available)")
    g.addoption("--parity-out", help="folder for captures and summaries (default: a new reports/parity-pytest-<time>)")


def pytest_collect_file(file_path: Path, parent):
    if parent.config.getoption("--parity") and file_path.suffix == ".toml":
        return CaseFile.from_parent(parent, path=file_path)
    return None


class _Session:
    """Shared across items: the side configuration, the output folder and a capture cache."""

    def __init__(self, config):
        from datetime import datetime

        from parity.environment import default_device
        from parity.suite import CaseRunner, SideConfig, new_run_folder
        from parity.tiny import ensure_checkpoint

        opt = config.getoption
        snapshot = opt("--parity-snapshot") or ensure_checkpoint()
        sides = SideConfig(snapshot=snapshot, trust_remote_code=opt("--parity-trust-remote-code"),
                           text_encoder=opt("--parity-text-encoder"), fastvideo_bundle=opt("--parity-bundle"),
                           device=opt("--parity-device") or default_device())
        out = opt("--parity-out")
        root = Path(out) if out else new_run_folder(Path("reports"), "pytest-" + datetime.now().strftime("%Y%m%d-%H%M%S"))
        self.runner = CaseRunner(sides, root, log=lambda _msg: None)
        self.results: dict[tuple[str, str], object] = {}


def _session(config) -> _Session:
    if not hasattr(config, "_waypoint_parity"):
        config._waypoint_parity = _Session(config)
    return config._waypoint_parity


class CaseFile(pytest.File):
    def collect(self):
        from parity.case import load_case
        from parity.errors import UserError
        from parity.suite import default_pairs

        try:
            case = load_case(self.path)
        except UserError as exc:
            raise self.CollectError(exc.one_line()) from None
        pairs, fastvideo_note = default_pairs()
        pairs = case.pairs or pairs
        for pair in pairs:
            for group in GROUPS:
                yield StageGroupItem.from_parent(self, name=f"{pair.name}::{group}", case=case, pair=pair, group=group)
        if fastvideo_note and not case.pairs:
            yield SkippedPairItem.from_parent(self, name="upstream-vs-fastvideo", reason=fastvideo_note)


class StageGroupItem(pytest.Item):
    def __init__(self, *, case, pair, group, **kwargs):
        super().__init__(**kwargs)
        self.case, self.pair, self.group = case, pair, group

    def runtest(self):
        session = _session(self.config)
        key = (self.case.name, self.pair.name)
        if key not in session.results:
            (outcome,) = session.runner.run_case(self.case, (self.pair,))
            session.results[key] = outcome
        result = session.results[key].result
        stages = [s for s in result.stages if s.key.family in GROUPS[self.group]]
        if not stages:
            pytest.skip(f"no {self.group} stages on either side")
        failed = [s for s in stages if not s.passed]
        if failed:
            raise ParityFailure(self.group, failed, session.results[key].out_dir)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ParityFailure):
            return str(excinfo.value)
        from parity.errors import UserError

        if isinstance(excinfo.value, UserError):
            return f"waypoint-parity: error: {excinfo.value.one_line()}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.case.name}::{self.pair.name}::{self.group}"


class SkippedPairItem(pytest.Item):
    def __init__(self, *, reason, **kwargs):
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self):
        pytest.skip(self.reason)


class ParityFailure(AssertionError):
    def __init__(self, group, failed, out_dir):
        first = failed[0]
        super().__init__(
            f"{len(failed)} {group} stage(s) diverge; first: {first.explain()}\n"
            f"details: {out_dir / 'summary.json'}"
        )
