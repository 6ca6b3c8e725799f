"""Many cases, many workers: `pytest --parity -n 2 --dist loadfile` equals a one-process run."""

from __future__ import annotations

import json

from tests.multi_helpers import devices, fingerprint, write_cases
from tests.test_pytest_plugin import plugin_args


def run_suite(pytester, tiny_checkpoint, out, *extra):
    return pytester.runpytest_subprocess(
        *plugin_args(), "--parity", "cases", "--parity-snapshot", str(tiny_checkpoint), "--parity-device", "cpu",
        "--parity-out", str(out), "-p", "no:cacheprovider", *extra,
    )


def test_two_xdist_workers_equal_one_process_and_merge_one_index(pytester, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("FASTVIDEO_SRC", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_cases(pytester.path / "cases")
    one = run_suite(pytester, tiny_checkpoint, pytester.path / "one", "-p", "no:xdist")
    two = run_suite(pytester, tiny_checkpoint, pytester.path / "two", "-n", "2", "--dist", "loadfile")
    assert one.ret == two.ret == 1  # the tiny script profile diverges from upstream by design
    assert one.parseoutcomes() == two.parseoutcomes()
    two.stdout.fnmatch_lines([f"parity report: {pytester.path / 'two' / 'index.html'}"])

    a, b = fingerprint(pytester.path / "one"), fingerprint(pytester.path / "two")
    assert sorted(a["comparisons"]) == [("alpha", "upstream-vs-script"), ("beta", "upstream-vs-script")]
    assert len(a["captures"]) == 6 and all(a["captures"].values())  # upstream, script and upstream's fp32 oracle, per case
    assert sum(name.endswith("upstream.oracle-fp32") for name in a["captures"]) == 2
    assert a == b  # same verdicts, same first divergences, bitwise the same captures
    assert devices(pytester.path / "two") == {"cpu"}

    # One index for the whole run (no per-worker leftovers), linking every comparison's report.
    run = pytester.path / "two"
    assert sorted(p.name for p in run.iterdir()) == ["alpha", "beta", "index.html", "index.json"]
    assert [e["case"] for e in json.loads((run / "index.json").read_text())["comparisons"]] == ["alpha", "beta"]
    html = (run / "index.html").read_text()
    for case in ("alpha", "beta"):
        assert f'href="{case}/upstream__vs__script@upstream/index.html"' in html
        assert (run / case / "upstream__vs__script@upstream" / "index.html").is_file()


def test_device_for_worker_pins_one_gpu_per_worker(monkeypatch):
    import torch

    from parity.shard import device_for_worker, worker_index

    assert worker_index("gw3") == 3 and worker_index("main") is None and worker_index(None) is None
    assert device_for_worker("cpu", 5) == "cpu"
    assert device_for_worker("cuda:1", 0) == "cuda:1"  # an explicit device is kept
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert [device_for_worker("cuda", k) for k in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert chosen == [0, 1, 2, 3, 0, 1]
