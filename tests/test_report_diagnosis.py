"""The diagnosis pages: attribution.html (`ablate`), diagnosis.html (`diagnose`), and both inside a report.

Everything is produced for real on the tiny checkpoint (2-frame cases): `attribute` with a few
ablations (one whose description holds `<script>`), the `ablate`, `diagnose` and `report` commands
through `parity.cli.main`. The pages are parsed and their values checked against the JSON the
commands wrote; every link and image must resolve on disk, nothing may point off the machine.
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from parity.cli import main
from parity.diagnose.ablation import Ablation, attribute
from parity.errors import UserError
from parity.report.diagnosis import attribution_answer, growth_sentence, write_attribution_page, write_diagnosis_page
from tests.test_report import Tags
from tests.test_report import element_text as _element_text

XSS = "no change <script>window.__xss = 1</script> & <b>bold</b>"
CASE = 'prompt = "a stone road"\nseed = 11\nframes = 2\n[controls]\nbuttons = [17]\n'


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diagpages")
    (root / "two.toml").write_text(CASE)
    return root


@pytest.fixture(scope="module")
def attribution(work, tiny_checkpoint) -> Path:
    """attribute() with three ablations (3-step schedule, fp32 decode, and a no-op whose description holds <script>)."""
    from parity.case import load_case
    from reference.runner import ReferenceRunner

    ablations = (Ablation("decode_fp32", "VAE in fp32", {"vae_dtype": "float32", "decode_input_dtype": "float32"}),
                 Ablation("sigmas_3step", "3-step schedule", {"sigmas": [1.0, 0.949, 0.840, 0.0]}),
                 Ablation("nothing", XSS, {}))
    attribute(load_case(work / "two.toml"), lambda req: ReferenceRunner(tiny_checkpoint).run(req), work / "ablate", ablations,
              log=lambda _m: None)
    return work / "ablate" / "attribution.json"


@pytest.fixture(scope="module")
def diagnosis(work, tiny_checkpoint) -> Path:
    """`waypoint-parity diagnose` upstream vs script: diverges at a model call, so the drill-down runs."""
    assert main(["diagnose", str(work / "two.toml"), "--out-root", str(work / "diag"), "--snapshot", str(tiny_checkpoint),
                 "--device", "cpu"]) == 0
    return next((work / "diag").glob("*diagnose-two-*/diagnosis.json"))


def element_text(page: str, ident: str) -> str:
    """Text of the element with this id, tags stripped, unescaped, whitespace collapsed."""
    return " ".join(_element_text(page, ident).split())


def cell(row: str, value: float, digits: int) -> bool:
    """Whether a table cell of `row` shows `value` as the report formats it."""
    return re.search(rf">{re.escape(f'{value:.{digits}g}')}\s*(<|$)", row) is not None


def _resolves(page: Path) -> list[str]:
    """Every href/src of `page`: must be a relative file that exists (anchors: the id exists). -> the local .html targets."""
    tags = Tags(page)
    pages = []
    for name, attrs in tags.tags:
        for attr in ("href", "src"):
            ref = attrs.get(attr)
            if ref is None or (name == "link" and ref == "data:,"):
                continue
            url = urlparse(ref)
            assert not url.scheme and not url.netloc and not ref.startswith("//"), f"{page.name}: remote or absolute {attr} {ref}"
            target = (page.parent / unquote(url.path)) if url.path else page
            assert target.is_file(), f"{page.name}: {attr} {ref} does not resolve"
            if url.fragment:
                assert f'id="{url.fragment}"' in target.read_text(encoding="utf-8"), f"{page.name}: anchor {ref} missing"
            if target.suffix == ".html":
                pages.append(target)
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", text), f"{page.name} references the network"
    assert "@import" not in text and "url(http" not in text
    return pages


def test_attribution_page_answers_ranks_and_escapes(attribution):
    data = json.loads(attribution.read_text())
    started = time.perf_counter()
    page = write_attribution_page(attribution)
    render_s = time.perf_counter() - started
    assert page == attribution.parent / "attribution.html" and render_s < 2
    text = page.read_text(encoding="utf-8")
    top = data["rows"][0]
    assert top["name"] == "sigmas_3step" and top["alone"]["sharpness_ratio"] < 0.95  # measured, not assumed
    answer = element_text(text, "answer")
    assert answer.startswith("Most detail is lost by sigmas_3step")
    assert f"x{top['alone']['sharpness_ratio']:.2g}" in answer, answer
    # the ranked table: one row per ablation, in rank order, with its measured numbers
    order = [m for m in re.findall(r'<tr id="ablation-([^"]+)"', text)]
    assert order == [r["name"] for r in data["rows"]] == ["sigmas_3step", "decode_fp32", "nothing"]
    row = re.search(r'<tr id="ablation-sigmas_3step".*?(?=<tr|</table>)', text, re.S).group(0)
    for key in ("blur", "sharpness_ratio", "latent_rel_l2"):
        assert cell(row, top["alone"][key], 3), key
    assert cell(row, top["cumulative"]["blur"], 3)
    # the <script> of a description is text, never markup
    assert "<script>window.__xss" not in text and "<script" not in text
    assert html.escape(XSS, quote=False) in text
    # the bar chart: one blur bar per ablation and series, inline
    svg = re.search(r'<div class="charts" id="blur-chart">(<svg.*?</svg>)', text, re.S).group(1)
    assert svg.count(" alone: ") == 3 and svg.count(" cumulative: ") == 3 and "<title>sigmas_3step alone: " in svg
    assert _resolves(page) == [page]  # itself (nav), plus attribution.json and .csv, both present
    assert {a.get("href") for _, a in Tags(page).tags if a.get("href")} >= {"attribution.json", "attribution.csv"}


def test_attribution_answer_when_nothing_blurs():
    def row(rank, name, sharp, rel, psnr):
        return {"rank": rank, "name": name, "description": name, "alone": {"sharpness_ratio": sharp, "latent_rel_l2": rel, "psnr": psnr,
                                                                           "ssim": 0.9, "hf_ratio": 1.0, "blur": 1 - sharp}}

    answer = attribution_answer({"rows": [row(1, "decode_fp32", 0.97, 0.0, 60.0), row(2, "scale", 1.8, 0.0, 24.0),
                                          row(3, "schedule_tweak", 1.01, 0.3, 30.0)]})
    assert answer.kind == "different" and answer.text.startswith("No ablation blurs")
    assert "largest difference is schedule_tweak" in answer.text
    # no latent change: the decode-only change with the lowest PSNR is the largest difference
    answer = attribution_answer({"rows": [row(1, "decode_fp32", 0.97, 0.0, 60.0), row(2, "scale", 1.8, 0.0, 24.0)]})
    assert "largest difference is scale" in answer.text
    assert attribution_answer({"rows": [row(1, "nothing", 1.0, 0.0, float("inf"))]}).kind == "none"
    with pytest.raises(UserError, match="not an attribution.json"):
        write_attribution_page({"rows": [{"rank": 1}]}, Path("/nonexistent"))


def test_diagnosis_page_shows_growth_steps_drill_down_and_cost(diagnosis, capsys):
    data = json.loads(diagnosis.read_text())
    page = diagnosis.parent / "diagnosis.html"
    assert page.is_file()  # written by the command itself
    text = page.read_text(encoding="utf-8")
    growth = data["growth"]
    verdict = element_text(text, "growth-verdict")
    assert " ".join(verdict.split()) == " ".join(growth_sentence(growth).text.split())
    assert growth["verdict"] == "grows within frames, bounded across frames" and verdict.startswith("Error grows within frames")
    # per-frame table and chart
    for f in growth["frames"]:
        row = re.search(rf'<tr id="frame-{f["frame"]}">(.*?)(?=<tr|</table>)', text, re.S).group(1)
        assert cell(row, f["local"], 4) and cell(row, f["cumulative"], 4)
    assert "rel-L2 per frame: local (teacher-forced) vs cumulative (free run)" in text
    # per-step table: every step of the growth report
    steps = re.search(r'<table class="raw" id="step-table">(.*?)</table>', text, re.S).group(1)
    assert steps.count("<tr>") == len(growth["steps"]) + 1 and len(growth["steps"]) == 2 * 2 * 4  # frames x families x steps
    # drill-down: the first divergent submodule and the module table
    drill = data["drill_down"]
    assert drill and drill["first_divergent_module"]
    first = element_text(text, "first-module")
    assert f"First divergent submodule: {drill['first_divergent_module']['a']}" in " ".join(first.split())
    modules = re.search(r'<table class="raw" id="module-table">(.*?)</table>', text, re.S).group(1)
    assert modules.count("<tr") == len(drill["modules"]) + 1
    assert element_text(text, "unmatched").count("none") == 2  # the tiny model's modules all match
    # cost relative to a plain run
    cost = element_text(text, "cost")
    for label, x in data["cost_vs_plain_run"].items():
        assert label in cost and f"{x:.3g}" in cost
    assert _resolves(page) == [page]
    # rendering again from the JSON gives the same page
    assert write_diagnosis_page(diagnosis).read_text(encoding="utf-8") == text


def test_ablate_command_prints_its_page(work, tiny_checkpoint, capsys):
    assert main(["ablate", str(work / "two.toml"), "--only", "decode_fp32", "--out-root", str(work / "cli-ablate"),
                 "--snapshot", str(tiny_checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    path = Path(re.search(r"^attribution page: (.+)$", out, re.M).group(1))
    assert path.is_file() and path.parent == next((work / "cli-ablate").glob("*ablate-two-*"))
    answer = element_text(path.read_text(encoding="utf-8"), "answer")
    assert answer.startswith("No ablation blurs") and "decode_fp32" in answer  # fp32 decode: frames differ, sharpness does not drop


def test_report_links_copies_and_shows_both_answers(work, attribution, diagnosis, capsys):
    data = json.loads(diagnosis.read_text())
    out = work / "report"
    args = ["report", data["captures"]["a"], data["captures"]["b_free"], "-o", str(out)]
    started = time.perf_counter()
    assert main(args + ["--attribution", str(attribution), "--diagnosis", str(diagnosis)]) == 0
    report_s = time.perf_counter() - started
    overview = (out / "index.html").read_text(encoding="utf-8")
    top = json.loads(attribution.read_text())["rows"][0]["name"]
    assert element_text(overview, "attribution-answer").split("Ablation:")[1].strip().startswith(f"Most detail is lost by {top}")
    assert "Error grows within frames" in element_text(overview, "growth-answer")
    # the pages are inside the report, beside their data, and the report reaches them
    for name in ("attribution.html", "attribution.json", "attribution.csv", "diagnosis.html", "diagnosis.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "diagnosis.json").read_text()) == data
    seen, queue = set(), [out / "index.html"]
    while queue:
        page = queue.pop().resolve()
        if page not in seen:
            seen.add(page)
            queue += _resolves(page)
    assert {out.resolve() / "attribution.html", out.resolve() / "diagnosis.html"} <= seen
    marker = json.loads((out / "report.json").read_text())
    assert marker["attribution"] == str(attribution.resolve()) and report_s < 60
    # the copy in the report carries the report's navigation
    nav = Tags(out / "attribution.html")
    assert any(a.get("href") == "index.html" for _, a in nav.tags)
    # regenerated without the flags: the copies go, the overview no longer mentions them
    assert main(args) == 0
    assert not (out / "attribution.html").exists() and not (out / "diagnosis.json").exists()
    assert 'id="attribution-answer"' not in (out / "index.html").read_text(encoding="utf-8")


def test_report_refuses_a_file_that_is_no_attribution(work, diagnosis, capsys):
    data = json.loads(diagnosis.read_text())
    bad = work / "bad.json"
    bad.write_text('{"rows": 3}')
    code = main(["report", data["captures"]["a"], data["captures"]["b_free"], "-o", str(work / "bad-report"), "--attribution", str(bad)])
    assert code == 2 and "not an attribution.json" in capsys.readouterr().err
    assert not (work / "bad-report").exists()  # refused before anything is written


def test_pages_load_in_a_browser_without_errors(work, attribution, diagnosis, tmp_path):
    from tests.test_browser_report import Chromium, _chromium_or_skip

    write_attribution_page(attribution)
    browser = Chromium(_chromium_or_skip(), tmp_path / "profile")
    try:
        for page in (attribution.parent / "attribution.html", diagnosis.parent / "diagnosis.html"):
            browser.errors.clear()
            browser.goto(page.as_uri())
            browser.pump(0.2)
            assert browser.errors == [], f"{page.name}: {browser.errors[:5]}"
            assert browser.js("typeof window.__xss") == "undefined"
            assert browser.js("document.querySelectorAll('svg.chart').length") >= 1
            if page.name == "attribution.html":
                assert XSS in browser.js("document.body.innerText")  # shown as text, not run
        remote = [u for u in browser.requests if not u.startswith(("file:", "data:"))]
        assert remote == []
    finally:
        browser.close()
