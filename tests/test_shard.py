"""`--shard I/N` over machines and `merge`: shards merged equal the unsharded run."""

from __future__ import annotations

import json

import pytest

from parity.cli import main
from tests.multi_helpers import fingerprint, write_cases
from tests.test_pytest_plugin import plugin_args


def parity(tiny_checkpoint, cases, out_root, *extra):
    code = main(["parity", str(cases), "--snapshot", str(tiny_checkpoint), "--device", "cpu",
                 "--out-root", str(out_root), *extra])
    (run,) = out_root.iterdir()
    return code, run


def test_shards_merged_equal_the_unsharded_run(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FASTVIDEO_SRC", raising=False)
    cases = write_cases(tmp_path / "cases")
    _, first = parity(tiny_checkpoint, cases, tmp_path / "s1", "--shard", "1/2")
    _, second = parity(tiny_checkpoint, cases, tmp_path / "s2", "--shard", "2/2")
    assert [e["case"] for e in json.loads((first / "index.json").read_text())["comparisons"]] == ["alpha"]
    assert [e["case"] for e in json.loads((second / "index.json").read_text())["comparisons"]] == ["beta"]
    # The unsharded run uses two worker processes: the parallel CLI path must agree too.
    _, whole = parity(tiny_checkpoint, cases, tmp_path / "all", "--workers", "2")

    merged = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", str(merged), str(first), str(second)]) == 0
    assert f"report: {merged / 'index.html'}" in capsys.readouterr().out
    assert fingerprint(merged) == fingerprint(whole)
    assert json.loads((merged / "index.json").read_text()) == json.loads((whole / "index.json").read_text())
    html = (merged / "index.html").read_text()
    assert "0 of 2 comparisons within tolerance" in html
    for case in ("alpha", "beta"):
        report = merged / case / "upstream__vs__script@upstream"
        assert f'href="{case}/upstream__vs__script@upstream/index.html"' in html and (report / "index.html").is_file()
        summary = json.loads((report / "summary.json").read_text())
        assert summary["a"]["capture"] == str((merged / case / "captures" / "upstream").resolve())
    # The sources are untouched (summary.json was rewritten as a new file, not through a hard link).
    assert json.loads((first / "alpha" / "upstream__vs__script@upstream" / "summary.json").read_text())["a"]["capture"].startswith(str(first))


def test_an_empty_shard_is_an_empty_run(tiny_checkpoint, tmp_path):
    cases = write_cases(tmp_path / "cases")
    code, run = parity(tiny_checkpoint, cases, tmp_path / "s", "--shard", "3/3")
    assert code == 0 and json.loads((run / "index.json").read_text())["comparisons"] == []


@pytest.mark.parametrize("shard, message", [
    ("0/2", "--shard: I must be between 1 and N (N >= 1), got '0/2'"),
    ("3/2", "--shard: I must be between 1 and N (N >= 1), got '3/2'"),
    ("x/y", "--shard: expected I/N with whole numbers, e.g. 1/4, got 'x/y'"),
    ("1/0", "--shard: I must be between 1 and N (N >= 1), got '1/0'"),
    ("2", "--shard: expected I/N with whole numbers, e.g. 1/4, got '2'"),
])
def test_bad_shard_is_one_line_exit_2(tmp_path, capsys, shard, message):
    cases = write_cases(tmp_path / "cases")
    assert main(["parity", str(cases), "--shard", shard, "--out-root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"waypoint-parity: error: {message}\n"
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_shard_in_pytest_is_a_usage_error(pytester):
    write_cases(pytester.path / "cases")
    result = pytester.runpytest_subprocess(*plugin_args(), "--parity", "cases", "--parity-shard", "3/2", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --shard: I must be between 1 and N (N >= 1), got '3/2'"])


def test_pytest_shard_selects_the_same_cases(pytester, tiny_checkpoint):
    write_cases(pytester.path / "cases")
    result = pytester.runpytest_subprocess(*plugin_args(), "--parity", "cases", "--parity-shard", "2/2", "--collect-only", "-q",
                                           "-p", "no:cacheprovider")
    listed = [line for line in result.stdout.lines if ".toml::" in line]
    assert listed and all(line.startswith("cases/beta.toml::") for line in listed)


def make_run(folder, cases=("alpha",)):
    folder.mkdir(parents=True)
    for case in cases:
        (folder / case / "p").mkdir(parents=True)
        (folder / case / "p" / "summary.json").write_text("{}")
    rows = [{"case": c, "pair": "upstream-vs-script", "verdict": "PASS", "summary": f"{c}/p/summary.json"} for c in cases]
    (folder / "index.json").write_text(json.dumps({"comparisons": rows, "notes": []}))
    return folder


@pytest.mark.parametrize("problem", ["out-not-empty", "no-index", "same-case-twice", "bad-index"])
def test_merge_refuses_with_one_line(tmp_path, capsys, problem):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", ("beta",))
    out = tmp_path / "out"
    if problem == "out-not-empty":
        out.mkdir()
        (out / "x").write_text("keep")
        expected = f"{out}: exists and is not empty; merge writes a new run folder"
    elif problem == "no-index":
        (b / "index.json").unlink()
        expected = f"{b}: not a parity run folder: no index.json"
    elif problem == "same-case-twice":
        b = make_run(tmp_path / "c", ("alpha",))
        expected = f"{b}: case 'alpha' is in both {a} and {b}; merge takes each case from one run"
    else:
        (b / "index.json").write_text("[1]")
        expected = f"{b / 'index.json'}: not a valid run index"
    assert main(["merge", str(out), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"waypoint-parity: error: {expected}") and err.count("\n") == 1
    assert problem == "out-not-empty" or not out.exists()
