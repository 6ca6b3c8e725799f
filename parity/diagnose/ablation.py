"""Ablation attribution: which known difference causes the blur, measured one at a time.

Starting from the reference run (upstream profile, shared noise, each run encoding its own prompt),
each ablation switches on one difference and its effect on the final frames is measured against
the base: PSNR, SSIM, sharpness ratio (variance of the Laplacian, B / base), high-frequency share
ratio, latent rel-L2. Then the same differences are stacked in a chosen order (cumulative), so the
table also shows what each adds on top of the ones before it.

Ranked by `blur` = 1 - sharpness ratio (detail lost), then by latent rel-L2 (difference): a
difference that changes the frames without blurring them ranks as "different", not "blurrier".

    table = attribute(case, sides, out_dir)              # the known differences below
    table = attribute(case, sides, out_dir, ablations_from_summary(summary))   # a real comparison's
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from parity.capture import Capture, StageKey
from parity.case import Alignment, Case
from parity.errors import UserError
from parity.metrics import compare_arrays, compare_frames, high_frequency_share, laplacian_variance
from parity.runner import RunRequest


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    options: dict[str, Any]
    noise: str = "shared"
    """Noise alignment of this run: an ablation of the noise rule needs each side's own draw."""


KNOWN: tuple[Ablation, ...] = (
    Ablation("sigmas_3step", "3-step schedule [1, 0.949, 0.840, 0] (FastVideo 2e2375dc8)", {"sigmas": [1.0, 0.949, 0.840, 0.0]}),
    Ablation("noise_global_rng", "noise from the global RNG instead of a per-frame generator", {"noise_rule": "global"}, noise="native"),
    Ablation("encoder_t5", "T5EncoderModel instead of UMT5EncoderModel on the same weights", {"encoder_class": "t5"}),
    Ablation("mask_float_fp32", "encoder in fp32, pad rows zeroed by a float mask, then cast", {"encoder_dtype": "float32", "mask_multiply": "float"}),
    Ablation("latent_scale_shift", "latent / 0.5 + 0.1 before decode (a scaling_factor and shift applied that Waypoint does not use)",
             {"latent_scale": 0.5, "latent_shift": 0.1}),
    Ablation("no_cache_pass", "no cache pass: K/V never written, every frame generated without history", {"cache_pass": False}),
    Ablation("decode_fp32", "VAE in fp32 and the latent cast to fp32 before decode", {"vae_dtype": "float32", "decode_input_dtype": "float32"}),
)
"""The differences the hand-written comparison guessed at, each as reference options."""


@dataclass
class Effect:
    psnr: float
    ssim: float
    sharpness_ratio: float
    hf_ratio: float
    latent_rel_l2: float

    @property
    def blur(self) -> float:
        return 1.0 - self.sharpness_ratio

    def to_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "blur": self.blur}


@dataclass
class Row:
    ablation: Ablation
    alone: Effect
    cumulative: Effect | None = None
    rank: int = 0


@dataclass
class AttributionTable:
    base: Path
    rows: list[Row]
    order: list[str]
    runs: dict[str, str] = field(default_factory=dict)

    def ranked(self) -> list[Row]:
        return sorted(self.rows, key=lambda r: r.rank)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": str(self.base),
            "ranking": "by blur = 1 - sharpness ratio (variance of the Laplacian), then latent rel-L2",
            "order": self.order,
            "rows": [
                {"rank": r.rank, "name": r.ablation.name, "description": r.ablation.description, "options": r.ablation.options,
                 "noise": r.ablation.noise, "alone": r.alone.to_dict(), "cumulative": r.cumulative.to_dict() if r.cumulative else None}
                for r in self.ranked()
            ],
            "runs": self.runs,
        }


def measure(base: Capture, other: Capture) -> Effect:
    """Mean over frames of each metric, final latent and decoded frame of `other` against `base`."""
    frames = range(int(base.manifest["frames_written"]))
    psnr, ssim, sharp, hf, rel = [], [], [], [], []
    for f in frames:
        a, b = base.tensor(StageKey(f, None, "decoded")), other.tensor(StageKey(f, None, "decoded"))
        m = compare_frames(a, b)
        psnr.append(m.psnr)
        ssim.append(m.ssim if m.ssim is not None else math.nan)
        la, lb = laplacian_variance(a), laplacian_variance(b)
        sharp.append(lb / la if la > 0 else math.nan)
        ha, hb = high_frequency_share(a), high_frequency_share(b)
        hf.append(hb / ha if ha > 0 else math.nan)
        rel.append(compare_arrays(base.tensor(StageKey(f, None, "latent")), other.tensor(StageKey(f, None, "latent"))).rel_l2)
    finite_psnr = [p for p in psnr if math.isfinite(p)]
    return Effect(
        psnr=float(np.mean(finite_psnr)) if finite_psnr else math.inf,
        ssim=float(np.nanmean(ssim)), sharpness_ratio=float(np.nanmean(sharp)), hf_ratio=float(np.nanmean(hf)),
        latent_rel_l2=float(np.mean(rel)),
    )


def attribute(case: Case, run: Callable[[RunRequest], Path], out_dir: Path, ablations: tuple[Ablation, ...] = KNOWN,
              order: list[str] | None = None, device: str = "cpu", log: Callable[[str], None] = print) -> AttributionTable:
    """Run the base and every ablation (alone, then cumulatively in `order`) and rank them.
    `run` turns a RunRequest into a capture (the upstream reference runner)."""
    names = [a.name for a in ablations]
    if len(set(names)) != len(names):
        raise UserError(f"ablation names must be unique, got {names}")
    order = order or names
    unknown = [n for n in order if n not in names]
    if unknown:
        raise UserError(f"unknown ablation {unknown[0]!r} in the order; known: {', '.join(names)}")
    by_name = {a.name: a for a in ablations}

    def request(label: str, options: dict, noise: str) -> RunRequest:
        variant = dataclasses.replace(case, alignment=Alignment(noise=noise, prompt="native"))
        return RunRequest(variant, "upstream", out_dir / label, device, options)

    log(f"  ablation base: {case.name}")
    base_dir = run(request("base", {}, "shared"))
    base = Capture.open(base_dir)
    runs = {"base": str(base_dir)}
    rows = {}
    for ab in ablations:
        log(f"  ablation alone: {ab.name}")
        d = run(request(f"alone-{ab.name}", ab.options, ab.noise))
        runs[f"alone-{ab.name}"] = str(d)
        rows[ab.name] = Row(ab, measure(base, Capture.open(d)))
    stacked: dict[str, Any] = {}
    noise = "shared"
    for i, name in enumerate(order):
        ab = by_name[name]
        stacked.update(ab.options)
        noise = "native" if ab.noise == "native" else noise
        log(f"  ablation cumulative {i + 1}/{len(order)}: + {name}")
        d = run(request(f"cumulative-{i + 1:02d}-{name}", dict(stacked), noise))
        runs[f"cumulative-{i + 1:02d}-{name}"] = str(d)
        rows[name].cumulative = measure(base, Capture.open(d))
    ranked = sorted(rows.values(), key=lambda r: (-_finite(r.alone.blur), -_finite(r.alone.latent_rel_l2)))
    for i, r in enumerate(ranked, 1):
        r.rank = i
    table = AttributionTable(base_dir, list(rows.values()), list(order), runs)
    (out_dir / "attribution.json").write_text(json.dumps(table.to_dict(), indent=1, default=str))
    _write_csv(table, out_dir / "attribution.csv")
    return table


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _write_csv(table: AttributionTable, path: Path) -> None:
    import pandas as pd

    rows = []
    for r in table.ranked():
        row = {"rank": r.rank, "name": r.ablation.name, "description": r.ablation.description}
        row.update({f"alone_{k}": v for k, v in r.alone.to_dict().items()})
        if r.cumulative:
            row.update({f"cumulative_{k}": v for k, v in r.cumulative.to_dict().items()})
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


_FROM_CONFIG = {
    "sigmas": lambda b: {"sigmas": [float(x) for x in b]},
    "encoder class": lambda b: {"encoder_class": {"UMT5EncoderModel": "umt5", "T5EncoderModel": "t5"}[b]},
    "encoder dtype": lambda b: {"encoder_dtype": b},
    "prompt mask": lambda b: {"mask_multiply": b},
    "model dtype": lambda b: {"model_dtype": b},
    "cache mode": lambda b: {"cache_mode": b, **({"cache_pass": False} if b == "none" else {})},
    "cache pass": lambda b: {"cache_pass": bool(b)},
    "VAE dtype": lambda b: {"vae_dtype": b},
    "decode input dtype": lambda b: {"decode_input_dtype": b},
    "latent scale": lambda b: {"latent_scale": float(b)},
    "latent shift": lambda b: {"latent_shift": float(b)},
}


def ablations_from_summary(summary_path: Path) -> tuple[tuple[Ablation, ...], list[str]]:
    """Each config-diff row of a comparison's summary.json that an option can reproduce, as an
    ablation of B's value; plus notes for the rows that cannot be reproduced."""
    from reference.options import resolve_options

    try:
        summary = json.loads(Path(summary_path).read_text())
        rows = summary["config_diff"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"not a comparison summary ({type(exc).__name__}: {exc})", summary_path) from None
    ablations, notes = [], []
    for row in rows:
        if not row.get("differs"):
            continue
        label, value = row["field"], row["b"]
        if label in ("native noise rule", "noise rule"):  # "noise rule": summaries written before the split
            rule = "global" if "global" in str(value) else "per_frame_generator" if "seed + frame" in str(value) else None
            if rule:
                ablations.append(Ablation("config_noise_rule", f"noise rule of B: {value}", {"noise_rule": rule}, noise="native"))
            else:
                notes.append(f"noise rule {value!r}: not reproducible by an option")
            continue
        if label not in _FROM_CONFIG:
            if label not in ("runner", "profile", "device", "prompt source", "weights", "noise used", "attention kernel", "steps", "sigma dtype", "noise dtype", "strict weight load"):
                notes.append(f"{label}: not reproducible by an option")
            continue
        try:
            options = _FROM_CONFIG[label](value)
            resolve_options("upstream", options)
        except (KeyError, ValueError, TypeError, UserError):
            notes.append(f"{label} = {value!r}: not a valid reference option value")
            continue
        ablations.append(Ablation("config_" + label.replace(" ", "_"), f"{label} of B: {value}", options))
    return tuple(ablations), notes
