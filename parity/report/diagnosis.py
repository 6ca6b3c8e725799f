"""HTML pages of the diagnosis commands: `attribution.html` (ablate) and `diagnosis.html` (diagnose).

    write_attribution_page("reports/ablate-x/attribution.json")   # -> reports/ablate-x/attribution.html
    write_diagnosis_page("reports/diagnose-x/diagnosis.json")     # -> reports/diagnose-x/diagnosis.html
    attribution_answer(data) / growth_sentence(data["growth"])     # the one-line answers, also on a report's overview

Both pages are rendered from the JSON the command wrote (a dict or its path), with the report's
templates and stylesheet: static, inline CSS and SVG, nothing fetched, every value escaped. A
comparison report given `--attribution`/`--diagnosis` renders the same pages into its own folder
(with the report's navigation) beside a copy of the JSON, so the report stays self-contained.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import UserError
from parity.report.svg import Series, bar_chart, line_chart
from parity.report.templating import environment, fmt_num

BLURS = 0.05
"""An ablation "blurs" when it lowers sharpness (variance of the Laplacian) by more than this share."""

ATTRIBUTION_PAGE, DIAGNOSIS_PAGE = "attribution.html", "diagnosis.html"


@dataclass
class Answer:
    kind: str
    """attribution: `blurrier`, `different`, `none`; growth: `none`, `bounded`, `grows`, `compounds`."""
    text: str


def load_json(source: dict | str | Path, what: str) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {what} ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(data, dict):
        raise UserError(f"not a {what}: expected a JSON object", path)
    return data


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: Any, digits: int = 3) -> str:
    return fmt_num(_num(value), digits)


# ---- attribution --------------------------------------------------------------------------------


def _check_attribution(data: dict[str, Any], path: Any = None) -> list[dict[str, Any]]:
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("alone"), dict) and "name" in r for r in rows):
        raise UserError("not an attribution.json (no rows with name and alone effect)", path)
    return sorted(rows, key=lambda r: r.get("rank", 0))


def attribution_answer(data: dict[str, Any]) -> Answer:
    """One sentence: the ablation that loses most detail with its numbers, or, when none lowers
    sharpness by more than 5%, that none blurs and which one differs most."""
    rows = _check_attribution(data)
    if not rows:
        return Answer("none", "No ablation was run.")

    def sharp(r):
        return _num(r["alone"].get("sharpness_ratio"))

    def evidence(r) -> str:
        e = r["alone"]
        return (f"sharpness x{_fmt(e.get('sharpness_ratio'), 2)} of the reference, high-frequency share x{_fmt(e.get('hf_ratio'), 3)}, "
                f"PSNR {_fmt(e.get('psnr'), 3)} dB, SSIM {_fmt(e.get('ssim'), 3)}, latent rel-L2 {_fmt(e.get('latent_rel_l2'))}")

    blurring = [r for r in rows if math.isfinite(sharp(r)) and sharp(r) < 1 - BLURS]
    if blurring:
        top = min(blurring, key=lambda r: (r.get("rank", 0)))
        others = [r["name"] for r in blurring if r is not top]
        tail = f"; also blurring: {', '.join(others)}" if others else "; no other ablation lowers sharpness by more than 5%"
        return Answer("blurrier", f"Most detail is lost by {top['name']} ({top.get('description', '')}): {evidence(top)}{tail}.")
    def difference(r) -> tuple[float, float]:
        """latent rel-L2 first, then how far PSNR is below identical (a decode-only change keeps the latent)."""
        rel, psnr = _num(r["alone"].get("latent_rel_l2")), _num(r["alone"].get("psnr"))
        return (rel if math.isfinite(rel) else 0.0, -psnr if math.isfinite(psnr) else -math.inf)

    largest = max(rows, key=difference)
    if difference(largest) == (0.0, -math.inf):
        return Answer("none", f"No ablation blurs and none changes the result: all {len(rows)} reproduce the reference exactly.")
    return Answer("different", f"No ablation blurs (none lowers sharpness by more than 5%); the largest difference is "
                               f"{largest['name']} ({largest.get('description', '')}): {evidence(largest)}.")


def attribution_context(data: dict[str, Any]) -> dict[str, Any]:
    rows = _check_attribution(data)
    chart = bar_chart([(r["name"], [_num(r["alone"].get("blur")), _num((r.get("cumulative") or {}).get("blur"))]) for r in rows],
                      "blur = 1 - sharpness ratio (above 0: detail lost)", series=["alone", "cumulative"])
    return {"answer": attribution_answer(data), "rows": rows, "chart": chart, "order": data.get("order") or [],
            "ranking": data.get("ranking", ""), "base": data.get("base"), "runs": data.get("runs") or {}, "blurs": BLURS}


def write_attribution_page(source: dict | str | Path, out_dir: str | Path | None = None, **report_ctx) -> Path:
    """Renders attribution.html from an attribution.json (dict or path) into `out_dir` (default:
    beside the JSON); returns its path. `report_ctx`: a report's navigation (families, title)."""
    data = load_json(source, "attribution.json")
    out_dir = Path(out_dir if out_dir is not None else Path(source).parent)
    _check_attribution(data, source if not isinstance(source, dict) else None)
    base = Path(str(data.get("base") or "")).parent.name
    ctx = _page_ctx(report_ctx, "attribution", f"ablation attribution{': ' + base if base else ''}", out_dir,
                    ("attribution.json", "attribution.csv"))
    html = _env().get_template("attribution.html").render(**ctx, **attribution_context(data))
    path = out_dir / ATTRIBUTION_PAGE
    path.write_text(html, encoding="utf-8")
    return path


# ---- diagnosis (teacher forcing, drill-down) ----------------------------------------------------

GROWTH_WORDS = {
    "none": ("none", "No error: neither the teacher-forced nor the free run of B departs from A."),
    "bounded": ("bounded", "Error stays bounded: the free run's error never exceeds {bound}x the largest local error, "
                           "so what goes wrong does not propagate."),
    "compounds across frames": ("compounds", "Error compounds across frames: the free run's error grows by more than {bound}x "
                                             "from its first nonzero frame to the last quarter of the frames; each frame inherits "
                                             "and adds to the last."),
    "grows within frames, bounded across frames": ("grows", "Error grows within frames but stays bounded across frames: the free "
                                                            "run's error exceeds {bound}x the local error, then settles."),
}


def growth_sentence(growth: dict[str, Any]) -> Answer:
    """The growth verdict in words, with the numbers behind it."""
    verdict = str(growth.get("verdict", ""))
    kind, text = GROWTH_WORDS.get(verdict, ("grows", f"Error growth: {verdict}."))
    text = text.format(bound=_fmt(growth.get("bound", 2.0)))
    frames = [f for f in growth.get("frames") or [] if isinstance(f, dict)]
    if frames and kind != "none":
        local = max(frames, key=lambda f: _finite(f.get("local")))
        cum = max(frames, key=lambda f: _finite(f.get("cumulative")))
        text += (f" Largest local error {_fmt(local.get('local'))} (frame {local.get('frame')}), largest cumulative "
                 f"{_fmt(cum.get('cumulative'))} (frame {cum.get('frame')}), last frame {_fmt(frames[-1].get('cumulative'))} "
                 f"over {len(frames)} frames.")
    return Answer(kind, text)


def _finite(v: Any) -> float:
    x = _num(v)
    return x if math.isfinite(x) else -math.inf


def diagnosis_context(data: dict[str, Any]) -> dict[str, Any]:
    growth = data.get("growth")
    if not isinstance(growth, dict):
        raise UserError("not a diagnosis.json (no growth)")
    frames = [f for f in growth.get("frames") or [] if isinstance(f, dict)]
    steps = [s for s in growth.get("steps") or [] if isinstance(s, dict)]
    charts = [line_chart([Series("local", [(f["frame"], _num(f.get("local"))) for f in frames]),
                          Series("cumulative", [(f["frame"], _num(f.get("cumulative"))) for f in frames])],
                         "rel-L2 per frame: local (teacher-forced) vs cumulative (free run)")] if frames else []
    families = sorted({s.get("family") for s in steps if s.get("family")})
    for fam in families:
        # x: frame + step / steps, so every step of every frame is one point in order
        n = max((int(s.get("step") or 0) for s in steps), default=0) + 1
        pts = [s for s in steps if s.get("family") == fam]
        charts.append(line_chart([Series("local", [(s["frame"] + s["step"] / n, _num(s.get("local"))) for s in pts]),
                                  Series("cumulative", [(s["frame"] + s["step"] / n, _num(s.get("cumulative"))) for s in pts])],
                                 f"{fam} rel-L2 per step", x_label="frame + step/steps"))
    drill = data.get("drill_down") if isinstance(data.get("drill_down"), dict) else None
    cost = data.get("cost_vs_plain_run") or {}
    timings = data.get("timings_s") or {}
    return {"answer": growth_sentence(growth), "growth": growth, "frames": frames, "steps": steps, "charts": charts,
            "drill": drill, "cost": [{"label": k, "x": cost.get(k), "s": timings.get(k)} for k in (list(timings) or list(cost))],
            "diagnosis": data, "captures": data.get("captures") or {}}


def write_diagnosis_page(source: dict | str | Path, out_dir: str | Path | None = None, **report_ctx) -> Path:
    """Renders diagnosis.html from a diagnosis.json (dict or path) into `out_dir` (default: beside the JSON)."""
    data = load_json(source, "diagnosis.json")
    out_dir = Path(out_dir if out_dir is not None else Path(source).parent)
    try:
        body = diagnosis_context(data)
    except UserError as exc:
        raise UserError(exc.message, None if isinstance(source, dict) else source) from None
    title = f"diagnosis: {data.get('case', '?')}, {data.get('b', 'B')} vs {data.get('a', 'A')}"
    ctx = _page_ctx(report_ctx, "diagnosis", title, out_dir, ("diagnosis.json",))
    html = _env().get_template("diagnosis.html").render(**ctx, **body)
    path = out_dir / DIAGNOSIS_PAGE
    path.write_text(html, encoding="utf-8")
    return path


# ---- shared -------------------------------------------------------------------------------------


def _page_ctx(report_ctx: dict[str, Any], page: str, title: str, out_dir: Path, beside: tuple[str, ...]) -> dict[str, Any]:
    links = [name for name in beside if (out_dir / name).is_file()]
    if report_ctx:  # inside a comparison report: its navigation and title
        return {**report_ctx, "page": page, "files": links}
    return {"page": page, "title": title, "families": [], "standalone": True, "standalone_links": links, "files": links}


def _env():
    return environment()
