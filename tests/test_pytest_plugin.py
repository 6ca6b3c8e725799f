"""Parity as a pytest suite: items per case x pair x stage group, failures naming the first divergence."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from importlib.metadata import entry_points

from tests.conftest import SMALL_CASE


def plugin_args():
    # Installed (make test): pytest loads the plugin from its entry point; from a bare checkout, by name.
    installed = any(ep.value == "parity.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "parity.pytest_plugin"]


def test_cases_become_items_and_failures_name_the_stage(pytester, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("FASTVIDEO_SRC", raising=False)
    cases = pytester.mkdir("cases")
    (cases / "small.toml").write_text(SMALL_CASE.replace("frames = 3", "frames = 2"))
    result = pytester.runpytest_subprocess(
        *plugin_args(), "--parity", "cases", "--parity-snapshot", str(tiny_checkpoint), "--parity-device", "cpu",
        "--parity-out", str(pytester.path / "out"), "--junitxml", "junit.xml", "-p", "no:cacheprovider",
    )
    # JUnit splits the item id at "::": classname ends with the pair, name is the stage group.
    cases_run = {f"{tc.get('classname').rsplit('.', 1)[-1]}::{tc.get('name')}": tc
                 for tc in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    outcome = {name: ("failure" if tc.find("failure") is not None else "skipped" if tc.find("skipped") is not None else "passed")
               for name, tc in cases_run.items()}
    assert {k: v for k, v in outcome.items() if k.startswith("upstream-vs-script")} == {
        "upstream-vs-script::prompt": "failure",  # the script's own encoding: T5EncoderModel, fp32
        "upstream-vs-script::controls": "passed",
        "upstream-vs-script::noise": "passed",
        "upstream-vs-script::denoise": "failure",
        "upstream-vs-script::latent": "failure",
        "upstream-vs-script::cache_pass": "failure",
        "upstream-vs-script::kv_cache": "passed",  # the script keeps no cache: its KV stages are not captured
        "upstream-vs-script::decoded": outcome["upstream-vs-script::decoded"],
    }
    assert outcome["toml::upstream-vs-fastvideo"] == "skipped"
    denoise = cases_run["upstream-vs-script::denoise"].find("failure").get("message") + cases_run["upstream-vs-script::denoise"].find("failure").text
    # the script's cache-less frame 1 judged against upstream's fp32 oracle (bf16 pair, made once for the case)
    assert "first: frame 1, step 0, step.velocity: B is " in denoise and "x as far from the fp32 oracle as A" in denoise
    cache = cases_run["upstream-vs-script::cache_pass"].find("failure").text
    assert "frame 0: cache pass missing in B (f0/cache_pass.sigma)" in cache
    assert result.ret == 1
    assert (pytester.path / "out" / "small" / "upstream__vs__script@upstream" / "summary.json").is_file()


def test_unit_test_runs_do_not_collect_case_files(pytester):
    (pytester.mkdir("cases") / "small.toml").write_text(SMALL_CASE)
    result = pytester.runpytest_subprocess(*plugin_args(), "cases", "-p", "no:cacheprovider")
    assert result.ret == 5  # no tests collected without --parity


def test_malformed_case_is_a_collection_error_with_one_line(pytester):
    (pytester.mkdir("cases") / "bad.toml").write_text("prompt = 'p'\nseed = 1\nframes = 0\n")
    result = pytester.runpytest_subprocess(*plugin_args(), "--parity", "cases", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*bad.toml: frames: must be a positive integer, got 0*"])
    assert result.ret == 2
