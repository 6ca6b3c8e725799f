"""Calibrated noise floors: how far a side drifts from itself under harmless perturbations.

A bf16 pipeline compared with itself under another attention kernel, or with its own fp32 run,
differs by its rounding floor. Measured per stage family, these floors make a verdict read
"3.1x the floor" instead of a bare number, and a stage fails when it exceeds `FLOOR_MULTIPLE` x
its floor (the dtype's absolute tolerance applies where the floor is zero).

Perturbations (each a set of reference options, compared with the unperturbed run):
- `attention_math`: scaled_dot_product_attention pinned to the math kernel
- `fp32`: the model, noise, encoder and VAE in fp32 (the side against its own higher precision)
- `device:<name>`: the same run on another device (`--devices cpu,cuda`), where one is available

Determinism: the unperturbed run is repeated; any stage that differs is reported as
nondeterministic (a property of the side, not a parity failure) and is excluded from the floors.

Band: on the CPU, calibration is deterministic and two calibrations give identical floors. On a
GPU, kernels may pick other algorithms between processes; floors from two calibrations are
expected within a factor of `BAND` of each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parity.capture import Capture
from parity.compare import compare_captures
from parity.errors import UserError
from parity.runner import RunRequest
from parity.tolerances import FAMILIES, Tolerance

FLOOR_MULTIPLE = 4.0
BAND = 2.0
FLOORS_SCHEMA = "waypoint-parity/floors"
FLOORS_VERSION = 1

PERTURBATIONS: dict[str, dict[str, Any]] = {
    "attention_math": {"sdpa_backend": "math"},
    "fp32": {"model_dtype": "float32", "noise_dtype": "float32", "encoder_dtype": "float32", "vae_dtype": "float32"},
}


@dataclass
class Floors:
    floors: dict[str, Tolerance]
    provenance: dict[str, Any] = field(default_factory=dict)
    nondeterministic: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        data = {
            "schema": FLOORS_SCHEMA, "schema_version": FLOORS_VERSION, "floor_multiple": FLOOR_MULTIPLE,
            "floors": {k: {"rel_l2": v.rel_l2, "max_abs": v.max_abs} for k, v in self.floors.items()},
            "nondeterministic": self.nondeterministic, "provenance": self.provenance,
        }
        path.write_text(json.dumps(data, indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> "Floors":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read floors ({type(exc).__name__}: {exc})", path) from None
        if not isinstance(data, dict) or data.get("schema") != FLOORS_SCHEMA or data.get("schema_version") != FLOORS_VERSION:
            raise UserError(f"not a floors file of version {FLOORS_VERSION} (make one with `waypoint-parity calibrate`)", path)
        floors = {}
        for family, v in data.get("floors", {}).items():
            if family not in FAMILIES or not isinstance(v, dict):
                raise UserError(f"floors: unknown stage family {family!r}", path)
            floors[family] = Tolerance(float(v["rel_l2"]), float(v["max_abs"]))
        return cls(floors, data.get("provenance", {}), list(data.get("nondeterministic", [])))


def calibrate(case, run: Callable[[RunRequest], Path], out_dir: Path, side: str = "upstream", device: str = "cpu",
              perturbations: dict[str, dict[str, Any]] | None = None, extra_devices: tuple[str, ...] = (),
              log: Callable[[str], None] = print) -> Floors:
    perturbations = dict(PERTURBATIONS if perturbations is None else perturbations)
    log(f"  calibrate {case.name}: base run (twice, for determinism)")
    base = run(RunRequest(case, side, out_dir / "base", device))
    again = run(RunRequest(case, side, out_dir / "base-again", device, prompt_from=base))
    repeat = compare_captures(Capture.open(base), Capture.open(again))
    nondeterministic = [s.key.id for s in repeat.stages if s.metrics is None or s.metrics.max_abs > 0]

    runs: dict[str, Path] = {}
    for name, options in perturbations.items():
        log(f"  calibrate {case.name}: {name}")
        runs[name] = run(RunRequest(case, side, out_dir / name, device, dict(options), prompt_from=base))
    for other in extra_devices:
        log(f"  calibrate {case.name}: device {other}")
        runs[f"device:{other}"] = run(RunRequest(case, side, out_dir / f"device-{other.replace(':', '_')}", other, prompt_from=base))

    per_perturbation: dict[str, dict[str, dict[str, float]]] = {}
    floors: dict[str, Tolerance] = {}
    source: dict[str, str] = {}
    for name, path in runs.items():
        result = compare_captures(Capture.open(base), Capture.open(path))
        fam: dict[str, dict[str, float]] = {}
        for s in result.stages:
            if s.metrics is None or s.key.id in nondeterministic:
                continue
            cur = fam.setdefault(s.key.family, {"rel_l2": 0.0, "max_abs": 0.0})
            cur["rel_l2"] = max(cur["rel_l2"], s.metrics.rel_l2)
            cur["max_abs"] = max(cur["max_abs"], s.metrics.max_abs)
        per_perturbation[name] = fam
        for family, v in fam.items():
            old = floors.get(family, Tolerance(0.0, 0.0))
            if v["rel_l2"] > old.rel_l2:
                source[family] = name
            floors[family] = Tolerance(max(old.rel_l2, v["rel_l2"]), max(old.max_abs, v["max_abs"]))
    provenance = {
        "case": case.name, "side": side, "device": device, "perturbations": perturbations,
        "extra_devices": list(extra_devices), "per_perturbation": per_perturbation, "floor_from": source,
        "environment": Capture.open(base).manifest.get("environment"), "captures": {k: str(v) for k, v in runs.items()},
    }
    result = Floors(floors, provenance, nondeterministic)
    result.save(out_dir / "floors.json")
    return result
