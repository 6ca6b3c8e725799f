"""The HTML report: what the overview states, escaping, assets, the folder guard, blur evidence, size.

Captures come from the tiny checkpoint (upstream vs script, which diverge) or are written
synthetically with CaptureWriter when a test needs control over the pixels (blur) or a long run
(240 frames) that the model would take too long to produce.
"""

from __future__ import annotations

import html
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.capture import Capture, CaptureWriter
from parity.cli import main
from parity.compare import compare_captures
from parity.errors import UserError
from parity.report import REPORT_MARKER, write_report, write_run_index
from parity.report.svg import Series, line_chart

XSS_PROMPT = 'A walk <script>window.__xss = 1</script> past "quoted" & <b>bold</b> signs'


class Tags(HTMLParser):
    """Every start tag as (name, attrs) plus the page's text, from one HTML file."""

    def __init__(self, path: Path):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def by_id(self, ident: str) -> dict | None:
        return next((a for _, a in self.tags if a.get("id") == ident), None)


def element_text(page: str, ident: str) -> str:
    """Text inside the element with this id (up to the next same-named closing tag), tags stripped, unescaped."""
    m = re.search(rf'<(\w+)[^>]*\bid="{re.escape(ident)}"[^>]*>(.*?)</\1>', page, re.S)
    assert m, f"no element with id {ident!r}"
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(2)))


def row_text(page: str, ident: str) -> str:
    """Text of a table row written without its optional closing tag (up to the next row or table end)."""
    m = re.search(rf'<tr[^>]*\bid="{re.escape(ident)}"[^>]*>(.*?)(?=<tr|</table>)', page, re.S)
    assert m, f"no row with id {ident!r}"
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(1)))


UPSTREAM_ENCODING = {"encoder_class": "umt5", "encoder_dtype": "bfloat16", "mask_multiply": "bool", "prompt_fix_text": True}


@pytest.fixture
def diverging(write_case, run_side):
    """(result, a_dir, b_dir): upstream vs script on a 3-frame case whose prompt holds <script>."""
    from parity.case import load_case

    case = load_case(write_case(f"""
        prompt = {json.dumps(XSS_PROMPT)}
        seed = 7
        frames = 3
        [controls]
        buttons = [17]
    """, "xss"))
    a = run_side(case, "upstream")
    # the script's protocol, but upstream's own prompt encoding: the report's first value divergence is then a
    # model call (the script's T5 encoding would otherwise be the first, at the run level)
    b = run_side(case, "script", prompt_from=a, options=UPSTREAM_ENCODING)
    return compare_captures(Capture.open(a), Capture.open(b)), a, b


def test_overview_states_verdict_first_divergence_model_and_escapes_the_prompt(diverging, tmp_path):
    result, a, b = diverging
    index = write_report(result, tmp_path / "r")
    page = index.read_text()
    tags = Tags(index)
    first = result.first_divergence
    assert not result.passed and first is not None
    assert element_text(page, "verdict").strip() == "FAIL"
    box = element_text(page, "first-divergence")
    assert first.explain() in box and first.key.id in box
    fv = result.first_value_divergence
    numbers = element_text(page, "first-value-divergence")
    assert fv.explain() in numbers
    assert f"{fv.metrics.rel_l2:.4g}" in numbers and f"{fv.tolerance.rel_l2:.4g}" in numbers
    # the divergence box comes before everything else in the page body
    assert page.index('id="first-divergence"') < page.index('id="test-model"') < page.index('id="stage-table"')
    assert "random-weight test model" in element_text(page, "test-model")
    # the prompt is text: escaped in the source, never a live tag
    assert element_text(page, "prompt").strip() == XSS_PROMPT
    assert "<script>window.__xss" not in page and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    assert not any(t == "b" for t, _ in tags.tags)
    assert [t for t, _ in tags.tags].count("script") == 0  # the overview needs no JS
    # config diff: differing rows highlighted and marked, designed differences (the script's own prompt
    # encoding, replaced by the shared prompt) marked apart, equal rows not
    rows = re.findall(r'<tr(?: class="(differs|designed)")?><td>([^<]+?)(?: [≠◇])?<td class="v">', page)
    differs = {name for cls, name in rows if cls == "differs"}
    same = {name for cls, name in rows if not cls}
    assert {"cache pass", "profile"} <= differs
    assert {"prompt source", "native noise rule"} <= {name for cls, name in rows if cls == "designed"}
    assert "encoder class" in same  # B was given upstream's own encoder (UPSTREAM_ENCODING)
    assert {"seed", "steps", "prompt"} <= same
    assert "Structure:" in element_text(page, "structure-answer")
    # one stage-table row per family, each linking to a detail page that exists
    links = [a["href"] for t, a in tags.tags if t == "a" and a.get("href", "").startswith("stage-") and "#" not in a["href"]]
    families = [f.family for f in result.families()]
    assert [l.removeprefix("stage-").removesuffix(".html") for l in dict.fromkeys(links)] == families
    assert all((index.parent / l).is_file() for l in links)


def test_every_reference_is_local_and_resolves_images_are_lazy(diverging, tmp_path):
    result, a, b = diverging
    out = tmp_path / "r"
    write_report(result, out, run_index=tmp_path / "index.html")
    write_run_index(tmp_path, [{"case": "xss", "pair": "upstream-vs-script", "result": result, "report": out / "index.html"}])
    pages = sorted(out.glob("*.html")) + [tmp_path / "index.html"]
    assert len(pages) == 2 + len(result.families()) + 1
    images = 0
    for page in pages:
        text = page.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), page
        for tag, attrs in Tags(page).tags:
            ref = attrs.get("src") or attrs.get("href")
            if not ref or ref.startswith(("data:", "#")):
                continue
            target, _, fragment = ref.partition("#")
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.name}: {ref} does not resolve"
            if fragment:
                assert f'id="{fragment}"' in path.read_text(), f"{page.name}: anchor {ref} missing"
            if tag == "img":
                images += 1
                assert attrs.get("loading") == "lazy" and attrs.get("width") and attrs.get("height")
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert images >= 3 * 4  # A, B, diff per frame (A twice for the flicker) and latent heatmaps
    decoded = Tags(out / "stage-decoded.html")
    assert [a.get("id") for t, a in decoded.tags if t == "tr" and re.fullmatch(r"f\d+", a.get("id", ""))] == ["f0", "f1", "f2"]
    video = json.loads((out / REPORT_MARKER).read_text())["video"]
    assert video and (out / video).stat().st_size > 1000
    assert f'href="{video}"' in (out / "index.html").read_text()


def test_stage_page_has_curves_heatmaps_and_raw_numbers(diverging, tmp_path):
    result, *_ = diverging
    out = tmp_path / "r"
    write_report(result, out)
    page = (out / "stage-step.velocity.html").read_text()
    assert page.count('<svg class="chart"') == 3
    for metric in ("rel-L2", "cosine", "max |B-A|"):
        assert f"step.velocity: {metric}" in page
    for step in range(4):
        assert f">step {step}</text>" in page
    fv = result.first_value_divergence
    assert fv.key.family == "step.velocity"
    row = row_text(page, fv.key.id.replace("/", "-"))
    assert fv.status in row and f"{fv.metrics.rel_l2:.3g}" in row
    assert "first failing stage: " + fv.key.where() in page  # its heatmap caption
    assert len(re.findall(r'<tr id="f\d+-step\d\.velocity"', page)) == 3 * 4


def test_report_folder_is_not_shared_between_comparisons(diverging, tmp_path, capsys):
    result, a, b = diverging
    out = tmp_path / "r"
    write_report(result, out)
    write_report(result, out)  # the same comparison again: replaced
    same = compare_captures(Capture.open(a), Capture.open(a))
    with pytest.raises(UserError, match="already holds the report of another comparison"):
        write_report(same, out)
    assert main(["report", str(a), str(a), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds the report of another comparison" in err[0]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.html").write_text("<p>mine</p>")
    with pytest.raises(UserError, match="not a waypoint-parity report"):
        write_report(result, tmp_path / "other")


def test_report_command_writes_and_prints_the_index(diverging, tmp_path, capsys):
    _, a, b = diverging
    assert main(["report", str(a), str(b), "-o", str(tmp_path / "cli")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].endswith(str(tmp_path / "cli" / "index.html")) and lines[-1].startswith("DIVERGED |")
    assert main(["report", str(a), str(b), "-o", str(tmp_path / "cli2"), "--check"]) == 1


def test_make_parity_prints_the_run_index_last(write_case, tiny_checkpoint, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "one.toml").write_text('prompt = "a road"\nseed = 3\nframes = 2\n[controls]\nbuttons = [17]\n')
    code = main(["parity", str(cases), "--out-root", str(tmp_path / "out"), "--snapshot", str(tiny_checkpoint), "--device", "cpu"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("DIVERGED: 0 of 1")
    assert lines[-2].startswith("report: ") and lines[-2].endswith("index.html")
    index = Path(lines[-2].removeprefix("report: "))
    assert index.is_file()
    link = next(a["href"] for t, a in Tags(index).tags if t == "a" and a.get("href", "").endswith("index.html"))
    report = index.parent / link
    assert report.is_file() and report.parent == next(index.parent.glob("one/upstream__vs__*"))
    assert 'href="../../index.html"' in report.read_text()  # back to the run index


# ---- synthetic captures -------------------------------------------------------------------------

LATENT = (1, 1, 16, 8, 8)


class BatchedWriter(CaptureWriter):
    """Writes the manifest once, at close: CaptureWriter rewrites it after every frame (crash safety),
    which costs O(frames^2) and would dominate a synthetic 240-frame capture."""

    def _write_manifest(self) -> None:
        if self.manifest.get("complete"):
            super()._write_manifest()


def synthetic(path: Path, frames: int, pixels, *, latent_noise: float = 0.0, side: str = "a", prompt: str = "synthetic") -> Path:
    """A capture with every stage family; `pixels(f)` gives frame f's decoded HWC uint8 image."""
    w = BatchedWriter(path, {"side": side, "seed": 0, "device": "cpu",
                             "case": {"name": "synthetic", "prompt": prompt, "seed": 0, "frames": frames},
                             "model": {"test_model": True, "description": "synthetic"},
                             "alignment": {"noise": "shared", "prompt": "shared"},
                             "environment": {"python": "3", "libraries": {"torch": torch.__version__}}})
    g = torch.Generator().manual_seed(0)
    w.record_prompt(torch.randn(1, 8, 4, generator=g), torch.zeros(1, 8, dtype=torch.bool))
    for f in range(frames):
        base = torch.randn(LATENT, generator=g)
        jitter = torch.randn(LATENT, generator=torch.Generator().manual_seed(1000 + f)) * latent_noise * (f + 1)
        x = base + jitter
        with w.frame(f) as rec:
            rec["controls.mouse"] = torch.zeros(1, 1, 2)
            rec["controls.button"] = torch.zeros(1, 1, 256)
            rec["controls.scroll"] = torch.zeros(1, 1, 1)
            rec["noise"] = base
            for i in range(4):
                rec[f"step{i}.sigma"] = torch.tensor(1.0 - i / 4)
                for name in ("input", "velocity", "update"):
                    rec[f"step{i}.{name}"] = x * (i + 1)
            rec["latent"] = x
            rec["cache_pass.input"] = x
            rec["cache_pass.output"] = x * 2
            rec["decoded"] = torch.from_numpy(np.ascontiguousarray(pixels(f)))
    w.close()
    return path


def texture(seed: int, shape=(48, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def blurred(img: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img.astype(np.float64), sigma=(1.2, 1.2, 0)).round().astype(np.uint8)


@pytest.mark.parametrize("b_pixels, kind, headline", [
    (lambda f: blurred(texture(f)), "blurrier", "B is blurrier than A on 6 of 6 differing frames"),
    (lambda f: texture(100 + f), "different", "B is different from A, not consistently blurrier"),
    (lambda f: texture(f), "identical", "A and B decode to identical frames"),
], ids=["blurred", "different-content", "identical"])
def test_blur_evidence_tells_blur_from_difference(tmp_path, b_pixels, kind, headline):
    a = synthetic(tmp_path / "a", 6, texture)
    b = synthetic(tmp_path / "b", 6, b_pixels, side="b")
    result = compare_captures(Capture.open(a), Capture.open(b))
    write_report(result, tmp_path / "r")
    blur = (tmp_path / "r" / "blur.html").read_text()
    finding = element_text(blur, "blur-finding")
    assert headline in finding and f'class="finding {kind}"' in blur
    assert headline in (tmp_path / "r" / "index.html").read_text()
    rows = [r for r in blur.split("<tr")[1:] if 'href="stage-decoded.html#f' in r]
    ratios = [float(re.findall(r'<td class="n">([^<\n]*)', r)[2]) for r in rows]  # Laplacian variance B / A
    assert len(ratios) == 6
    if kind == "blurrier":
        assert all(r < 0.5 for r in ratios)
    else:
        assert all(0.9 < r < 1.1 for r in ratios)
    assert blur.count('<svg class="chart"') == (4 if kind == "identical" else 5)  # PSNR is inf throughout when identical


def test_frame_pngs_hold_the_decoded_pixels_exactly(tmp_path):
    from PIL import Image

    from parity.report.images import decoded_diff_heatmap

    a = synthetic(tmp_path / "a", 2, texture)
    b = synthetic(tmp_path / "b", 2, lambda f: texture(f) // 2, side="b")
    write_report(compare_captures(Capture.open(a), Capture.open(b)), tmp_path / "r")
    frames = tmp_path / "r" / "assets" / "frames"
    for f in range(2):
        pa, pb = texture(f), texture(f) // 2
        assert np.array_equal(np.asarray(Image.open(frames / f"a-{f:06d}.png")), pa)
        assert np.array_equal(np.asarray(Image.open(frames / f"b-{f:06d}.png")), pb)
        assert np.array_equal(np.asarray(Image.open(frames / f"diff-{f:06d}.png")), decoded_diff_heatmap(pa, pb))


def test_worker_processes_give_the_same_comparison_and_report_as_threads(tmp_path, monkeypatch):
    """The two ways `parity.frame_pool` spreads frames: same stage results, same pages, same images."""
    import parity.frame_pool as frame_pool

    a = synthetic(tmp_path / "a", 5, texture)
    b = synthetic(tmp_path / "b", 5, lambda f: blurred(texture(f)), latent_noise=1e-3, side="b")
    out = {}
    for processes in (False, True):
        monkeypatch.setattr(frame_pool, "use_processes", lambda items, p=processes: p)
        result = compare_captures(Capture.open(a), Capture.open(b))
        folder = tmp_path / f"r-{processes}"
        write_report(result, folder)
        pages = {p.name: p.read_text() for p in folder.glob("*.html")}
        pngs = {p.relative_to(folder): p.read_bytes() for p in (folder / "assets").rglob("*.png")}
        out[processes] = (repr([s.to_dict() for s in result.stages]), pages, pngs, result.passed)
    assert out[True] == out[False]
    assert len(out[True][2]) >= 5 * 4 and not out[True][3]


def test_frame_workers_follow_the_cpus_this_process_may_use(monkeypatch):
    import os

    from parity.frame_pool import MAX_WORKERS, frame_map, workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(128)), raising=False)
    assert workers() == MAX_WORKERS
    monkeypatch.undo()
    assert set(frame_map(lambda _: os.getpid(), range(2), processes=True)) != {os.getpid()}
    assert set(frame_map(lambda _: os.getpid(), range(2), processes=False)) == {os.getpid()}


def test_frames_stay_in_threads_once_cuda_is_initialised(monkeypatch):
    """`make parity` on a GPU compares in the process that generated: no fork after CUDA."""
    import os

    import torch

    import parity.frame_pool as frame_pool

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(frame_pool.sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert frame_pool.use_processes(240)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert not frame_pool.use_processes(240)


@pytest.mark.slow
def test_240_frame_report_keeps_html_under_10_mb(tmp_path):
    frames = 240
    a = synthetic(tmp_path / "a", frames, lambda f: texture(f, (36, 64, 3)))
    b = synthetic(tmp_path / "b", frames, lambda f: texture(f, (36, 64, 3)) // 2 + 40, latent_noise=1e-3, side="b")
    result = compare_captures(Capture.open(a), Capture.open(b))
    assert result.first_divergent_frame == 0
    started = time.perf_counter()
    write_report(result, tmp_path / "r")
    elapsed = time.perf_counter() - started
    html_bytes = sum(p.stat().st_size for p in (tmp_path / "r").glob("*.html"))
    assert html_bytes < 10_000_000, f"{html_bytes / 1e6:.1f} MB of HTML"
    assert len(list((tmp_path / "r" / "assets" / "frames").glob("a-*.png"))) == frames
    assert 'id="f239-step3.velocity"' in (tmp_path / "r" / "stage-step.velocity.html").read_text()
    print(f"240 frames: {html_bytes / 1e6:.2f} MB of HTML, written in {elapsed:.1f} s")


def test_svg_chart_escapes_labels_and_breaks_lines_at_missing_values():
    svg = str(line_chart([Series("<b>x</b>", [(0, 1.0), (1, float("nan")), (2, 2.0), (3, 3.0)])], 'a "title" <i>',
                         hlines=[(2.5, "allowed")]))
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg and "&lt;i&gt;" in svg
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1  # the point before the NaN stands alone
    assert "allowed 2.5" in svg
    assert "no values to plot" in str(line_chart([Series("s", [])], "empty"))
