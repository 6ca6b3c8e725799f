"""Parity as a pytest suite: one test item per case, pair and stage family.

    pytest --parity cases/                                  # built-in tiny checkpoint, CPU
    pytest --parity cases/ --parity-snapshot Overworld/Waypoint-1-Small --parity-trust-remote-code \\
           --parity-device cuda --junitxml parity.xml       # GPU CI with real weights

Items are named `cases/seed-official.toml::upstream-vs-script::denoise`, so a JUnit report shows
which case and which stage broke parity; the failure message is the first divergence of that
family with its numbers and tolerance, or its distance from the fp32 oracle against A's: pairs with
a bf16/fp16 side are judged against A's fp32 oracle, run once per case (`--parity-no-oracle`: fixed
dtype bounds instead; see parity.oracle). Both sides of a case run once, on the first item that needs
them. Without `--parity`, TOML files are not collected (the project's own unit tests stay separate).

In parallel (pytest-xdist), one worker per GPU:

    pytest --parity cases/ -n 4 --dist loadfile --parity-device cuda

`--dist loadfile` keeps every item of a case file on one worker (they share the captures); worker
gwK runs on cuda:(K mod GPU count) (see parity.shard.device_for_worker). The controller picks the
run folder and the checkpoint once and hands them to the workers; at the end it merges what the
workers wrote into one index.json and one index.html (parity.merge). `--parity-shard I/N` keeps
the cases of one shard (sorted by name, every N-th starting at the I-th) for a CI matrix;
`waypoint-parity merge` joins the shards' run folders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GROUPS = {
    "prompt": ("prompt.embedding", "prompt.pad_mask", "prompt.native_embedding", "prompt.native_pad_mask"),
    "controls": ("controls.mouse", "controls.button", "controls.scroll"),
    "noise": ("noise.native", "noise"),
    "denoise": ("step.sigma", "step.timestamp", "step.input", "step.velocity", "step.update"),
    "latent": ("latent",),
    "cache_pass": ("cache_pass.sigma", "cache_pass.timestamp", "cache_pass.input", "cache_pass.output"),
    "kv_cache": ("kv.frames", "kv.keys", "kv.values"),
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
    g.addoption("--parity-shard", metavar="I/N", help="run only shard I of N of the cases (sorted by name, every N-th)")
    g.addoption("--parity-no-oracle", action="store_true",
                help="judge pairs with a bf16/fp16 side by fixed dtype bounds instead of against A's fp32 oracle")


_SHARED = "waypoint_parity"
"""Key of what the controller hands to xdist workers in `workerinput`: run folder, snapshot, notes."""


def pytest_configure(config):
    if not config.getoption("--parity") or hasattr(config, "workerinput"):
        return
    from parity.errors import UserError
    from parity.shard import parse_shard

    shard = config.getoption("--parity-shard")
    if shard:
        try:
            parse_shard(shard)
        except UserError as exc:
            raise pytest.UsageError(exc.one_line()) from None
    config._waypoint_parity_shared = None  # decided on first need (no folder for a run that collects nothing)


def _shared(config) -> dict:
    """Run folder, snapshot and notes: the controller's own, or those it handed to this worker."""
    if hasattr(config, "workerinput"):
        return config.workerinput[_SHARED]
    if getattr(config, "_waypoint_parity_shared", None) is None:
        import shutil
        from datetime import datetime

        from parity.merge import PARTS
        from parity.suite import default_pairs, new_run_folder
        from parity.tiny import ensure_checkpoint

        out = config.getoption("--parity-out")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
        root = Path(out) if out else new_run_folder(Path("reports"), "pytest-" + datetime.now().strftime("%Y%m%d-%H%M%S"))
        shutil.rmtree(root / PARTS, ignore_errors=True)  # rows of an earlier, interrupted run into the same --parity-out
        snapshot = str(config.getoption("--parity-snapshot") or ensure_checkpoint())  # made once, not per worker
        _, fastvideo_note = default_pairs(config.getoption("--parity-bundle"), snapshot)
        config._waypoint_parity_shared = {
            "root": str(root.resolve()),
            "snapshot": snapshot,
            "notes": [f"FastVideo side skipped: {fastvideo_note}"] if fastvideo_note else [],
        }
    return config._waypoint_parity_shared


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller, before a worker starts: hand it the one run folder and checkpoint."""
    if node.config.getoption("--parity"):
        node.workerinput[_SHARED] = _shared(node.config)


def pytest_collection_modifyitems(session, config, items):
    shard = config.getoption("--parity-shard")
    if not (config.getoption("--parity") and shard):
        return
    from parity.shard import parse_shard, select_shard

    def case_name(item):
        parent = item.getparent(CaseFile)
        return getattr(parent, "case_name", None) if parent is not None else None

    parity_items = [i for i in items if case_name(i) is not None]
    keep = set(map(id, select_shard(parity_items, parse_shard(shard), case_name)))
    deselected = [i for i in parity_items if id(i) not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if id(i) not in {id(d) for d in deselected}]


def pytest_sessionfinish(session, exitstatus):
    """Controller (or a run without xdist): one index.json and index.html from every worker's part."""
    config = session.config
    if hasattr(config, "workerinput") or getattr(config, "_waypoint_parity_shared", None) is None:
        return
    from parity.merge import finish_parts

    shared = config._waypoint_parity_shared
    paths = finish_parts(Path(shared["root"]), shared["notes"])
    if paths:
        config._waypoint_parity_index = paths[1]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    html = getattr(config, "_waypoint_parity_index", None)
    if html:
        terminalreporter.write_line(f"parity report: {html}")


def pytest_collect_file(file_path: Path, parent):
    if parent.config.getoption("--parity") and file_path.suffix == ".toml":
        return CaseFile.from_parent(parent, path=file_path)
    return None


class _Session:
    """Shared across the items of one process: the side configuration, the run folder (one for all
    xdist workers) and a capture cache."""

    def __init__(self, config):
        from parity.environment import default_device
        from parity.shard import device_for_worker, worker_index
        from parity.suite import CaseRunner, SideConfig

        opt = config.getoption
        shared = _shared(config)
        self.worker = config.workerinput["workerid"] if hasattr(config, "workerinput") else "main"
        device = opt("--parity-device") or default_device()
        k = worker_index(self.worker)
        if k is not None:
            device = device_for_worker(device, k)
        sides = SideConfig(snapshot=shared["snapshot"], trust_remote_code=opt("--parity-trust-remote-code"),
                           text_encoder=opt("--parity-text-encoder"), fastvideo_bundle=opt("--parity-bundle"),
                           device=device)
        self.root = Path(shared["root"])
        self.runner = CaseRunner(sides, self.root, log=lambda _msg: None, oracle=not opt("--parity-no-oracle"))
        self.results: dict[tuple[str, str], object] = {}

    def run_pair(self, case, pair):
        """Runs the pair, writes its HTML report and records its index row for the controller."""
        from parity.merge import append_part
        from parity.report import write_report
        from parity.suite import index_entry

        (outcome,) = self.runner.run_case(case, (pair,))
        write_report(outcome.result, outcome.out_dir, run_index=self.root / "index.html")
        append_part(self.root, self.worker, index_entry(outcome, self.root))
        return outcome


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
        self.case_name = case.name
        pairs, fastvideo_note = default_pairs(self.config.getoption("--parity-bundle"), _shared(self.config)["snapshot"])
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
            session.results[key] = session.run_pair(self.case, self.pair)
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
