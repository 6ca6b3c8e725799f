"""The fp32 oracle: side A's run once more in high precision, on exactly the inputs A got.

A pair of bf16 sides can only be judged against something better than either: the oracle is the
reference runner with A's profile and options, the transformer and the VAE in fp32, fed the same
input values as A (so it measures computation error, not input rounding):

- the prompt embedding and pad mask are A's, injected from A's capture (bf16 values upcast exactly);
- the shared noise is drawn in A's noise dtype (bf16-rounded, then upcast), the native rule the same;
- the sigmas are A's schedule as A used it (after rounding to A's sigma dtype), held in fp32: the
  same values, in a dtype an fp32 model accepts.

Every pair with a reduced-precision side (`needs_oracle`) is judged against it by default (see
`parity.tolerances`). The oracle is made once per reference capture and reused by every pair:
`make parity` writes it beside A as `captures/<A>.oracle-fp32`, and `compare` looks there (or
makes it there) unless `--oracle DIR` or `--no-oracle` says otherwise. Its manifest's `purpose`
block says what it is an oracle of and which inputs it shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.capture import Capture, manifest_value
from parity.errors import UserError

ORACLE_DTYPE = "float32"
SUFFIX = ".oracle-fp32"
REDUCED = ("bfloat16", "float16")
INPUTS = ("A's prompt embedding and pad mask (injected, upcast exactly); noise drawn in A's noise dtype and "
          "upcast; A's sigmas as A used them (rounded), held in fp32: the oracle measures computation error, "
          "not input rounding")


def oracle_options(dtype: str = ORACLE_DTYPE, compile_mode: str = "none") -> dict[str, Any]:
    """Option overrides that turn a reference side into its oracle (inputs' dtypes are kept).

    Eager by default. `compile_mode` is for long real-size runs: world_engine's eager flex attention is
    PyTorch's unfused fallback (~1.6 s a frame at Waypoint-1-Small's size on an H200), while a compiled
    fp32 model stays ~1e-6 from the eager one, four orders below the bf16 errors it judges."""
    # world_engine's inference patches are bf16 lookup tables (same math as the plain model): the oracle runs
    # the plain model in fp32
    return {"model_dtype": dtype, "vae_dtype": dtype, "decode_input_dtype": "model", "compile_mode": compile_mode,
            "world_engine_setup": "none"}


def needs_oracle(a: Capture, b: Capture) -> bool:
    """True when either side computes in a reduced precision (transformer or VAE)."""
    return any(manifest_value(c.manifest, f"protocol.{k}") in REDUCED for c in (a, b) for k in ("model_dtype", "vae_dtype"))


def can_make_oracle(a: Capture) -> bool:
    """Only a reference-runner capture can be rerun in fp32 (FastVideo as A has no oracle)."""
    return manifest_value(a.manifest, "runner.name") == "reference" and not a.manifest.get("purpose")


def default_location(a_dir: Path) -> Path:
    return a_dir.parent / f"{a_dir.name}{SUFFIX}"


def purpose(a_dir: Path, dtype: str = ORACLE_DTYPE) -> dict[str, Any]:
    return {"oracle_of": str(a_dir), "dtype": dtype, "inputs": INPUTS}


def make_oracle(runner, case, side: str, a_dir: Path, out_dir: Path, device: str, options: dict[str, Any],
                dtype: str = ORACLE_DTYPE, compile_mode: str = "none") -> Path:
    """Runs `runner` (A's reference runner) for `case` with A's `options` in `dtype` into `out_dir`,
    capturing what A captured (its `every:K` and KV policy: a full KV view of a real-size run is
    ~0.46 GB a frame, and stages A did not keep cannot be judged anyway)."""
    from parity.capture import CapturePolicy
    from parity.runner import RunRequest

    a = Capture.open(a_dir)
    sigmas = a.protocol.get("sigmas")
    schedule = {"sigmas": list(sigmas), "sigma_dtype": dtype} if sigmas else {}
    return runner.run(RunRequest(case, side, out_dir, device, {**options, **oracle_options(dtype, compile_mode), **schedule},
                                 prompt_from=a_dir, purpose=purpose(a_dir, dtype),
                                 capture=CapturePolicy.from_manifest(a.manifest).text()))


def check_oracle(oracle: Capture, a: Capture) -> None:
    """An oracle given by hand must be a run of the same case, seed and frame count as A."""
    for key in ("case.prompt", "case.seed", "case.frames", "case.controls", "case.alignment"):
        if manifest_value(oracle.manifest, key) != manifest_value(a.manifest, key):
            raise UserError(f"not an oracle of {a.run_dir}: its {key.split('.', 1)[1]} differs", oracle.run_dir / "manifest.json")


def oracle_for(a: Capture, out_dir: Path | None = None, trust_remote_code: bool = False, device: str | None = None,
               compile_mode: str = "none") -> Path:
    """The oracle of a stored reference capture, made from what A's manifest records (snapshot,
    code source, profile, resolved options, case), at `out_dir` (default: beside A). Reused when
    it is already there."""
    from reference.runner import ReferenceRunner

    out_dir = out_dir or default_location(a.run_dir)
    if (out_dir / "manifest.json").is_file():
        oracle = Capture.open(out_dir)
        check_oracle(oracle, a)
        if oracle.complete:
            return out_dir
        raise UserError("an incomplete oracle capture is in the way; remove it or pass --oracle/--no-oracle", out_dir)
    snapshot = manifest_value(a.manifest, "model.snapshot")
    if not snapshot or not Path(snapshot).exists():
        raise UserError(f"cannot make the fp32 oracle: A's snapshot {snapshot} is not here; pass --oracle DIR or --no-oracle",
                        a.run_dir / "manifest.json")
    runner = ReferenceRunner(snapshot, profile=manifest_value(a.manifest, "runner.profile") or "upstream",
                             trust_remote_code=trust_remote_code,
                             code_source=manifest_value(a.manifest, "runner.code_source") or "snapshot")
    options = {k: v for k, v in (a.manifest.get("options") or {}).items()}
    return make_oracle(runner, case_from_manifest(a), a.manifest.get("side", "upstream"), a.run_dir, out_dir,
                       device or _device(a), options, compile_mode=compile_mode)


def case_from_manifest(a: Capture):
    """The case A ran, rebuilt from its manifest (resolved controls, alignment, options)."""
    from parity.case import Alignment, Case, FrameControls

    c = a.manifest.get("case") or {}
    try:
        controls = tuple(FrameControls(tuple(f["buttons"]), tuple(f["mouse"]), f["scroll"]) for f in c["controls"])
        return Case(name=c["name"], prompt=c["prompt"], seed=int(c["seed"]), frames=int(c["frames"]), controls=controls,
                    alignment=Alignment(**c.get("alignment", {})), options=dict(c.get("options", {})),
                    path=Path(c["path"]) if c.get("path") else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"manifest's case block cannot be rerun for an oracle ({exc})", a.run_dir / "manifest.json") from None


def _device(a: Capture) -> str:
    device = str(a.manifest.get("device") or "cpu")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "cpu"
    return device
