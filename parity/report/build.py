"""Builds one comparison's HTML report, and the index page of a whole `make parity` run.

Pipeline of `write_report(result, out_dir)`:
1. `_claim`         refuse a folder that holds another comparison's report (report.json names it)
2. `_render_frames` one pass over the frames of both captures: PNGs (A, B, |diff|, latent heatmaps),
                    sharpness of each side, the A | B | diff video
3. `_families`      per stage family: error curves (inline SVG) and the raw numbers
4. render           index.html (overview), stage-<family>.html, blur.html, then report.json

Layout of a report folder (everything relative, nothing remote, opens from the file system):

    index.html  blur.html  stage-<family>.html  report.json
    assets/frames/{a,b,diff,latent}-000012.png   assets/heat/<stage>.png   assets/side-by-side.mp4 (or .gif)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.capture import Capture, StageKey
from parity.compare import FAIL, ComparisonResult, StageResult
from parity.errors import UserError
from parity.frame_pool import frame_map
from parity.output import oracle_summary
from parity.metrics import HF_CUTOFF, PSNR_DATA_RANGE, SSIM_PARAMS, sharpness
import parity.report.images as images
from parity.report.svg import Series, line_chart
from parity.report.templating import environment, family_page, stage_anchor

REPORT_MARKER = "report.json"
REPORT_SCHEMA = "waypoint-parity/report"
LATENT_FAMILIES = ("noise", "step.input", "step.velocity", "step.update", "latent", "cache_pass.input", "cache_pass.output")
SOFTER, SHARPER = 0.95, 1.05
"""A frame of B counts as softer than A when both sharpness ratios B/A are below SOFTER."""
CONSISTENT = 0.75
"""B is called blurrier when at least this share of the differing frames is softer."""

FAMILY_NOTES = {
    "prompt.embedding": "text-encoder output fed to the transformer (1, tokens, channels)",
    "prompt.pad_mask": "which prompt tokens are padding (True = padding)",
    "controls.mouse": "mouse velocity of the frame",
    "controls.button": "pressed buttons of the frame (256 slots)",
    "controls.scroll": "scroll direction of the frame",
    "noise": "the starting noise of each frame",
    "step.sigma": "noise level of each denoise step",
    "step.input": "latent entering each denoise step",
    "step.velocity": "transformer prediction at each step",
    "step.update": "latent after each step's Euler update",
    "latent": "final latent of each frame",
    "cache_pass.input": "latent fed to the KV-cache pass",
    "cache_pass.output": "output of the KV-cache pass",
    "decoded": "the frame the VAE decoded (uint8 RGB)",
}


@dataclass
class FrameRow:
    """One frame's images (paths relative to the report) and its blur evidence."""

    frame: int
    status: str = "-"
    a_png: str | None = None
    b_png: str | None = None
    diff_png: str | None = None
    latent_png: str | None = None
    size: tuple[int, int] = (0, 0)
    latent_size: tuple[int, int] = (0, 0)
    lap_a: float = math.nan
    lap_b: float = math.nan
    hf_a: float = math.nan
    hf_b: float = math.nan
    psnr: float | None = None
    ssim: float | None = None

    @property
    def lap_ratio(self) -> float:
        return self.lap_b / self.lap_a if self.lap_a > 0 else math.nan

    @property
    def hf_ratio(self) -> float:
        return self.hf_b / self.hf_a if self.hf_a > 0 else math.nan


@dataclass
class Heatmap:
    caption: str
    png: str
    size: tuple[int, int]


@dataclass
class BlurFinding:
    kind: str
    """`blurrier`, `sharper`, `different`, `identical` or `none`."""
    headline: str
    detail: str


@dataclass
class FrameArtifacts:
    rows: list[FrameRow]
    heatmaps: dict[str, Heatmap] = field(default_factory=dict)
    video: str | None = None


def write_report(result: ComparisonResult, out_dir: str | Path, *, run_index: Path | None = None,
                 title: str | None = None, attribution: str | Path | None = None, diagnosis: str | Path | None = None) -> Path:
    """Writes the report of `result` into `out_dir`; returns the path of its index.html.

    `run_index` (the run's index.html) adds a link back to it. Regenerating the report of the same
    two captures into the same folder replaces it; any other report there is a UserError.
    `attribution` / `diagnosis`: an attribution.json (`ablate`) / diagnosis.json (`diagnose`); their
    pages are rendered into the report (beside a copy of the JSON) and their one-line answers
    shown on the overview."""
    import parity.report.diagnosis as diag

    started = time.perf_counter()
    out_dir = Path(out_dir)
    extra = {"attribution": (diag.load_json(attribution, "attribution.json"), Path(attribution)) if attribution else None,
             "diagnosis": (diag.load_json(diagnosis, "diagnosis.json"), Path(diagnosis)) if diagnosis else None}
    try:
        answers = {"attribution_answer": diag.attribution_answer(extra["attribution"][0]) if extra["attribution"] else None}
    except UserError as exc:
        raise UserError(exc.message, attribution) from None
    try:
        answers["growth_answer"] = diag.diagnosis_context(extra["diagnosis"][0])["answer"] if extra["diagnosis"] else None
    except UserError as exc:
        raise UserError(exc.message, diagnosis) from None
    identity = _identity(result)
    _claim(out_dir, identity)
    assets = out_dir / "assets"
    if assets.exists():
        shutil.rmtree(assets)  # ours (checked by _claim): stale frames of an earlier rendering
    (assets / "frames").mkdir(parents=True)
    (assets / "heat").mkdir()

    by_id = {s.key.id: s for s in result.stages}
    families = result.families()
    art = _render_frames(result, by_id, families, out_dir)
    blur = blur_finding(art.rows)
    case = result.a.manifest.get("case", {}) or {}
    ctx = {
        "title": title or f"{result.a.name} (A) vs {result.b.name} (B)" + (f": {case['name']}" if case.get("name") else ""),
        "result": result, "case": case, "passed": result.passed,
        "first": result.first_divergence, "first_value": result.first_value_divergence,
        "first_frame": result.first_divergent_frame,
        "families": [_family_entry(f) for f in families],
        "oracle": oracle_summary(result),
        "config": [{"field": r.field, "a": r.text_a, "b": r.text_b, "differs": r.differs and r.kind != "designed",
                    "designed": r.differs and r.kind == "designed"} for r in result.config],
        "structure": _structure_entry(result),
        "models": _side_by_side(_model_block(result.a), _model_block(result.b)),
        "test_model": [s.name for s in (result.a, result.b) if (s.manifest.get("model") or {}).get("test_model")],
        "alignment": _side_by_side(_flatten(result.a.manifest.get("alignment") or {}), _flatten(result.b.manifest.get("alignment") or {})),
        "environment": _side_by_side(_flatten(result.a.manifest.get("environment") or {}),
                                     _flatten(result.b.manifest.get("environment") or {})),
        "sides": [_side_entry(s) for s in (result.a, result.b)],
        "blur": blur, "video": art.video, "rows": art.rows,
        "run_index": os.path.relpath(run_index, out_dir) if run_index else None,
        "extras": [name for name in ("summary.json", "stages.csv") if (out_dir / name).is_file()],
        "metric_parameters": {"ssim": SSIM_PARAMS, "psnr_data_range": PSNR_DATA_RANGE, "hf_cutoff": HF_CUTOFF},
        "anchor": stage_anchor,
        "diagnosis_pages": [{"href": page, "page": name, "label": label} for name, page, label in
                            (("attribution", diag.ATTRIBUTION_PAGE, "ablation attribution"), ("diagnosis", diag.DIAGNOSIS_PAGE, "error growth"))
                            if extra[name]],
        **answers,
    }
    env = environment()
    _diagnosis_pages(out_dir, extra, ctx)
    _write(out_dir / "index.html", env.get_template("overview.html").render(page="overview", **ctx))
    _write(out_dir / "blur.html", env.get_template("blur.html").render(page="blur", charts=_blur_charts(art.rows, result), **ctx))
    by_family: dict[str, list[StageResult]] = {}
    for s in result.stages:
        by_family.setdefault(s.key.family, []).append(s)

    def family_job(fam) -> None:
        stages = by_family[fam.family]
        page = env.get_template("family.html").render(
            page=fam.family, fam=_family_entry(fam), stages=stages, note=FAMILY_NOTES.get(fam.family, ""),
            charts=_oracle_charts(fam.family, stages) + _family_charts(fam.family, stages, result.first_divergent_frame),
            heatmaps=[h for k, h in art.heatmaps.items() if StageKey.from_id(k).family == fam.family],
            **ctx)
        _write(out_dir / family_page(fam.family), page)

    # Independent pages; a long run's KV families hold thousands of rows each.
    for _ in frame_map(family_job, families):
        pass
    marker = {"schema": REPORT_SCHEMA, **identity, "verdict": "PASS" if result.passed else "FAIL",
              "frames": len(art.rows), "video": art.video, "generation_s": round(time.perf_counter() - started, 3),
              **{name: str(v[1].resolve()) for name, v in extra.items() if v}}
    _write(out_dir / REPORT_MARKER, json.dumps(marker, indent=1))
    return out_dir / "index.html"


def write_run_index(out_root: str | Path, entries: list[dict[str, Any]], notes: list[str] = ()) -> Path:
    """The index.html of a whole run. Each entry: case, pair, result (ComparisonResult), report
    (path of that comparison's index.html)."""
    out_root = Path(out_root)
    rows = []
    for e in entries:
        r: ComparisonResult = e["result"]
        first = r.first_divergence
        rows.append({"case": e["case"], "pair": e["pair"], "passed": r.passed,
                     "first": first.explain() if first else None,
                     "first_value": r.first_value_divergence.explain() if r.first_value_divergence else None,
                     "frame": r.first_divergent_frame, "href": os.path.relpath(e["report"], out_root),
                     "test_model": bool((r.a.manifest.get("model") or {}).get("test_model"))})
    html = environment().get_template("run_index.html").render(
        page="run", title=f"parity run {out_root.name}", rows=rows, notes=list(notes),
        passed=sum(r["passed"] for r in rows), test_model=any(r["test_model"] for r in rows))
    path = out_root / "index.html"
    _write(path, html)
    return path


def _diagnosis_pages(out_dir: Path, extra: dict[str, Any], ctx: dict[str, Any]) -> None:
    """attribution.html / diagnosis.html inside the report, rendered from a copy of their JSON (and
    attribution.csv) so the report stays self-contained; stale copies of an earlier rendering go."""
    import parity.report.diagnosis as diag

    copies = {"attribution": ("attribution.json", "attribution.csv", diag.ATTRIBUTION_PAGE),
              "diagnosis": ("diagnosis.json", diag.DIAGNOSIS_PAGE)}
    for name, files in copies.items():
        for f in files:
            (out_dir / f).unlink(missing_ok=True)  # ours: _claim checked the folder
        if not extra[name]:
            continue
        data, source = extra[name]
        _write(out_dir / files[0], json.dumps(data, indent=1))
        if name == "attribution" and (source.parent / files[1]).is_file():
            shutil.copyfile(source.parent / files[1], out_dir / files[1])
        writer = diag.write_attribution_page if name == "attribution" else diag.write_diagnosis_page
        report_ctx = {k: ctx[k] for k in ("title", "families", "run_index", "diagnosis_pages")}
        writer(data, out_dir, **report_ctx)


# ---- claim --------------------------------------------------------------------------------------


def _identity(result: ComparisonResult) -> dict[str, Any]:
    def side(cap: Capture) -> dict[str, str]:
        digest = hashlib.sha256((cap.run_dir / "manifest.json").read_bytes()).hexdigest()
        return {"capture": str(cap.run_dir.resolve()), "manifest_sha256": digest}

    return {"a": side(result.a), "b": side(result.b)}


def _claim(out_dir: Path, identity: dict[str, Any]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("report folder is a file; choose another -o", out_dir)
    marker = out_dir / REPORT_MARKER
    if marker.is_file():
        try:
            held = json.loads(marker.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            held = {}
        if held.get("schema") != REPORT_SCHEMA or {k: held.get(k) for k in ("a", "b")} != identity:
            a, b = (held.get(k, {}).get("capture", "?") for k in ("a", "b"))
            raise UserError(f"already holds the report of another comparison ({a} vs {b}); choose another -o or remove it", out_dir)
    elif (out_dir / "index.html").exists():
        raise UserError("already holds an index.html that is not a waypoint-parity report; choose another -o", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


# ---- frames -------------------------------------------------------------------------------------


def _render_frames(result: ComparisonResult, by_id: dict[str, StageResult], families, out_dir: Path) -> FrameArtifacts:
    a, b = result.a, result.b
    n = max(int(a.manifest.get("frames_written", 0)), int(b.manifest.get("frames_written", 0)))
    wanted = _heatmap_stages(families, result.stages)

    def frame_job(f: int):
        """Everything one frame needs, from its own reads (safe in a worker thread or process): the
        row, the PNGs (written here), the video frame, the requested heatmaps."""
        row = FrameRow(f)
        needed = [StageKey(f, None, "decoded"), StageKey(f, None, "latent")] + [st.key for st, _ in wanted.get(f, ())]
        ta = _arrays(a, needed)
        tb = _arrays(b, needed)
        video_frame, heatmaps = None, []
        key = StageKey(f, None, "decoded")
        s = by_id.get(key.id)
        if s is not None:
            row.status = s.status
            fa, fb = ta.get(key), tb.get(key)
            for side, pixels in (("a", fa), ("b", fb)):
                if pixels is not None:
                    rel = f"assets/frames/{side}-{f:06d}.png"
                    images.save_png(out_dir / rel, pixels)
                    setattr(row, f"{side}_png", rel)
                    lap, hf = sharpness(pixels)
                    setattr(row, f"lap_{side}", lap)
                    setattr(row, f"hf_{side}", hf)
                    row.size = pixels.shape[:2]
            if s.metrics is not None:
                row.psnr, row.ssim = s.metrics.psnr, s.metrics.ssim
                heat = images.decoded_diff_heatmap(fa, fb)
                row.diff_png = f"assets/frames/diff-{f:06d}.png"
                images.save_png(out_dir / row.diff_png, heat)
                gap = np.full((fa.shape[0], 4, 3), 255, np.uint8)
                video_frame = np.concatenate([fa, gap, fb, gap, heat], axis=1)
        lkey = StageKey(f, None, "latent")
        ls = by_id.get(lkey.id)
        if ls is not None and ls.metrics is not None and len(ls.shape_a or ()) == 5:
            heat = images.latent_diff_heatmap(ta[lkey][0, 0], tb[lkey][0, 0])
            row.latent_png, row.latent_size = f"assets/frames/latent-{f:06d}.png", heat.shape[:2]
            images.save_png(out_dir / row.latent_png, heat)
        for stage, why in wanted.get(f, ()):
            heat = images.latent_diff_heatmap(ta[stage.key][0, 0], tb[stage.key][0, 0])
            rel = f"assets/heat/{stage_anchor(stage.key.id)}.png"
            images.save_png(out_dir / rel, heat)
            heatmaps.append((stage.key.id, Heatmap(f"{why}: {stage.key.where()} (rel_l2 {stage.metrics.rel_l2:.3g})", rel, heat.shape[:2])))
        return row, video_frame, heatmaps

    art = FrameArtifacts(rows=[])
    video = None
    for row, video_frame, heatmaps in frame_map(frame_job, range(n)):  # in frame order, computed ahead
        art.rows.append(row)
        art.heatmaps.update(heatmaps)
        if video_frame is not None:
            if video is None:
                video = images.VideoWriter(out_dir / "assets" / "side-by-side")
            video.append(video_frame)
    if video is not None:
        art.video = str(video.close().relative_to(out_dir))
    return art


def _heatmap_stages(families, stages: list[StageResult]) -> dict[int, list[tuple[StageResult, str]]]:
    """Per frame, the latent-shaped stages that get a heatmap: each family's first value failure and its worst stage."""
    wanted: dict[int, list[tuple[StageResult, str]]] = {}
    chosen: set[str] = set()
    for fam in families:
        if fam.family not in LATENT_FAMILIES:
            continue
        members = [s for s in stages if s.key.family == fam.family and s.metrics is not None and len(s.shape_a or ()) == 5]
        first_fail = next((s for s in members if s.status == FAIL), None)
        worst = max(members, key=lambda s: s.metrics.rel_l2 if math.isfinite(s.metrics.rel_l2) else math.inf, default=None)
        for s, why in ((first_fail, "first failing stage"), (worst, "largest rel_l2")):
            if s is not None and s.key.id not in chosen:
                chosen.add(s.key.id)
                wanted.setdefault(s.key.frame, []).append((s, why))
    return wanted


def _numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.uint8:
        return t.numpy()
    return t.to(torch.float32).numpy()


def _arrays(cap: Capture, keys: list[StageKey]) -> dict[StageKey, np.ndarray]:
    """The stages of `keys` this capture holds, as numpy, read without the capture's shared cache."""
    present = [k for k in keys if k.id in cap.manifest["tensors"]]
    return {k: _numpy(t) for k, t in cap.tensors(present).items()}


# ---- blur ---------------------------------------------------------------------------------------


def blur_finding(rows: list[FrameRow]) -> BlurFinding:
    """Tells "B is blurrier than A" (both sharpness ratios B/A below 0.95 on most differing frames)
    from "B is different from A" (frames differ, sharpness does not drop consistently)."""
    both = [r for r in rows if r.a_png and r.b_png and r.psnr is not None]
    if not both:
        return BlurFinding("none", "No decoded frames on both sides", "Blur cannot be judged without decoded frames from A and B.")
    differing = [r for r in both if not math.isinf(r.psnr)]
    if not differing:
        return BlurFinding("identical", "A and B decode to identical frames",
                           f"All {len(both)} decoded frames are bit-identical; sharpness is equal by construction.")
    softer = [r for r in differing if r.lap_ratio < SOFTER and r.hf_ratio < SOFTER]
    sharper = [r for r in differing if r.lap_ratio > SHARPER and r.hf_ratio > SHARPER]
    lap = _median([r.lap_ratio for r in differing])
    hf = _median([r.hf_ratio for r in differing])
    psnr = _median([r.psnr for r in differing])
    ssim = _median([r.ssim for r in differing if r.ssim is not None])
    numbers = (f"Over the {len(differing)} frames that differ: median sharpness ratio B/A {lap:.3f} (Laplacian variance) "
               f"and {hf:.3f} (high-frequency energy share); B is softer on {len(softer)}, sharper on {len(sharper)}; "
               f"median PSNR {psnr:.1f} dB, SSIM {ssim:.3f}.")
    if len(softer) >= CONSISTENT * len(differing):
        return BlurFinding("blurrier", f"B is blurrier than A on {len(softer)} of {len(differing)} differing frames", numbers)
    if len(sharper) >= CONSISTENT * len(differing):
        return BlurFinding("sharper", f"B is sharper (or noisier) than A on {len(sharper)} of {len(differing)} differing frames", numbers)
    return BlurFinding("different", "B is different from A, not consistently blurrier", numbers)


def _median(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _blur_charts(rows: list[FrameRow], result: ComparisonResult) -> list:
    vl = [(result.first_divergent_frame, "first divergent frame")] if result.first_divergent_frame is not None else []

    def s(label, attr):
        return Series(label, [(r.frame, _f(getattr(r, attr))) for r in rows])

    return [
        line_chart([s("A", "lap_a"), s("B", "lap_b")], "sharpness: variance of the Laplacian (higher = sharper)", log=False, vlines=vl),
        line_chart([s("A", "hf_a"), s("B", "hf_b")], f"sharpness: share of spectral energy above {HF_CUTOFF} x Nyquist",
                   log=False, vlines=vl),
        line_chart([s("Laplacian", "lap_ratio"), s("high-freq share", "hf_ratio")], "sharpness ratio B / A (below 1: B softer)",
                   log=False, hlines=[(1.0, "equal")], vlines=vl),
        line_chart([Series("PSNR", [(r.frame, _f(r.psnr)) for r in rows])], "PSNR of B against A, dB (inf = identical, not drawn)",
                   log=False, vlines=vl),
        line_chart([Series("SSIM", [(r.frame, _f(r.ssim)) for r in rows])], "SSIM of B against A (1 = identical)", log=False, vlines=vl),
    ]


# ---- families -----------------------------------------------------------------------------------


def _family_charts(family: str, stages: list[StageResult], first_frame: int | None) -> list:
    measured = [s for s in stages if s.metrics is not None and s.key.frame is not None]
    if not measured:
        return []
    steps = sorted({s.key.step for s in measured}, key=lambda x: -1 if x is None else x)
    vl = [(first_frame, "first divergent frame")] if first_frame is not None else []
    tols = {(s.tolerance.rel_l2, s.tolerance.max_abs) for s in measured if s.tolerance}
    tol = tols.pop() if len(tols) == 1 else None
    charts = []
    for metric, label, hl in (("rel_l2", "rel-L2 error ||B-A||/||A||", tol and tol[0]),
                              ("cosine", "cosine similarity", None),
                              ("max_abs", "max |B-A|", tol and tol[1])):
        series = [Series("all frames" if step is None else f"step {step}",
                         [(s.key.frame, _f(getattr(s.metrics, metric))) for s in measured if s.key.step == step]) for step in steps]
        hlines = [(hl, "allowed")] if hl is not None and math.isfinite(hl) else []
        charts.append(line_chart(series, f"{family}: {label}", hlines=hlines, vlines=vl, log=False if metric == "cosine" else None))
    return charts


def _oracle_charts(family: str, stages: list[StageResult]) -> list:
    """Both sides' distance from the oracle across frames (steps spread inside each frame), with
    A's envelope (what B is allowed) and the stages where B leaves it."""
    judged = [s for s in stages if s.oracle is not None and s.key.frame is not None]
    if not judged:
        return []
    steps = max((s.key.step for s in judged if s.key.step is not None), default=0) + 1

    def x(s: StageResult) -> float:
        return s.key.frame + (s.key.step or 0) / steps

    outside = [s for s in judged if not s.oracle.passed]
    series = [Series("A vs oracle", [(x(s), _f(s.oracle.err_a)) for s in judged]),
              Series("B vs oracle", [(x(s), _f(s.oracle.err_b)) for s in judged]),
              Series("A's envelope (allowed B)", [(x(s), _f(s.oracle.allowed)) for s in judged]),
              Series("B outside", [(x(s), _f(s.oracle.err_b) if not s.oracle.passed else math.nan) for s in judged])]
    vl = [(x(outside[0]), "B leaves A's envelope")] if outside else []
    where = "frame (steps spread within each frame)" if steps > 1 else "frame"
    dtype = judged[0].oracle.oracle_dtype
    return [line_chart(series, f"{family}: rel-L2 distance from the {dtype} oracle, A and B", vlines=vl, x_label=where)]


def _family_entry(fam) -> dict[str, Any]:
    return {"family": fam.family, "stages": fam.stages, "failed": fam.failed, "passed": fam.passed, "worst": fam.worst,
            "first_failing": fam.first_failing, "largest": fam.largest, "largest_oracle_ratio": fam.largest_oracle_ratio,
            "page": family_page(fam.family)}


# ---- manifest blocks ----------------------------------------------------------------------------


def _structure_entry(result: ComparisonResult) -> dict[str, Any] | None:
    diff = result.structure
    if diff is None:
        return None
    return {"available": diff.available, "note": diff.note, "matched": diff.matched,
            "differing": len(diff.differences),
            "rows": [{"kind": f.kind, "where": f.label, "what": f.what, "a": f.a, "b": f.b,
                      "how": f.how, "count": n} for f, n in diff.grouped()]}


def _model_block(cap: Capture) -> dict[str, Any]:
    model = cap.manifest.get("model") or {}
    out = {k: model.get(k) for k in ("description", "test_model", "snapshot", "revision", "code_trust") if k in model}
    for name, digest in (model.get("weights_sha256") or {}).items():
        out[f"weights {name}"] = digest
    return out


def _side_entry(cap: Capture) -> dict[str, Any]:
    m = cap.manifest
    return {"name": cap.name, "capture": str(cap.run_dir), "complete": cap.complete, "frames": m.get("frames_written"),
            "elapsed_s": m.get("elapsed_s")}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _side_by_side(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(a) + [k for k in b if k not in a]
    return [{"field": k, "a": fmt_value(a.get(k)), "b": fmt_value(b.get(k)), "differs": a.get(k) != b.get(k)} for k in keys]


def fmt_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.8g}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(f"{v:.8g}" if isinstance(v, float) else str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt_value(v)}" for k, v in value.items())
    return str(value)


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


# ---- templates ----------------------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
