"""The capture format (schema version 2): everything one run computed, stage by stage.

A run folder holds

    manifest.json              what ran, how, on what; one entry per tensor (shape, dtype, stats, sha256)
    prompt.safetensors         prompt.embedding (1, L, D), prompt.pad_mask (1, L) bool, True = padding:
                               what the model was given (the shared prompt when one was injected);
                               prompt.native_embedding, prompt.native_pad_mask: the side's own text
                               stage on the case's prompt, run once even when a shared prompt is used
    frames/000000.safetensors  one file per generated frame, holding that frame's stages:
        controls.mouse (1,1,2)  controls.button (1,1,256)  controls.scroll (1,1,1)
        noise.native (1,1,C,H,W)           the side's own draw for this frame, before any shared noise replaced it
        noise (1,1,C,H,W)                  what the first step was given
        step{i}.sigma ()  step{i}.timestamp (1,1) int64
        step{i}.input  step{i}.velocity  step{i}.update   (1,1,C,H,W), one set per model call of the denoise loop
        latent (1,1,C,H,W)                 the final latent of the frame
        cache_pass.sigma ()  cache_pass.timestamp (1,1) int64
        cache_pass.input  cache_pass.output (1,1,C,H,W)   absent when the side made no cache pass this frame
        kv{j}.frames (n,) int64            after the cache pass, per layer j: the frames the layer can attend to
        kv{j}.keys  kv{j}.values           their keys and values in frame order, (B, heads, n * tokens, head_dim)
                                           (see `parity.kv_view`); with `kv:digest`, (B, heads, n, 3) statistics
        decoded (H', W', 3) uint8          what vae.decode returned
    frames/000000.json         that frame's entries of the manifest's tensor table (a sidecar), and its
                               notes (e.g. which known rule the side's native noise followed)
    frames/000000.<part>.safetensors, .json    stages of frame 0 that the pipeline produced later than
                               the rest (FastVideo's head decodes after generating every frame); same layout

    frames/000000.json         that frame's entries of the manifest's tensor table (a sidecar)
    structure.json             the live models' structure as the run built them (`parity.structure`):
                               modules, parameter/buffer shapes, dtypes and checksums, numerics
                               attributes, KV-cache windows; optional (older captures lack it)

Steps and cache passes are what the side's pipeline did, in order, not what the protocol says it
should have done: a side that skipped its cache pass has no cache_pass stages at that frame, a side
with an extra denoise call has one more step. Tensors keep the dtype the pipeline produced (bf16
stays bf16). Each frame's file, then its sidecar, is written through a temporary name and an atomic
rename; manifest.json is written at the start and at the end (with every tensor), never once per
frame, so writing stays O(1) per frame on long runs. A killed run leaves a readable capture of
every finished frame: `Capture.open` merges the sidecars, and `manifest["complete"]` is false until
the run ends. Version 1 captures (without the native, timestamp and KV stages) still open; another
version is a one-line error.

What is captured (`CapturePolicy`, recorded in the manifest, never silent): `full` (default),
`every:K` (the per-step tensors, the largest family, on every K-th frame only; final latents,
cache passes and decoded frames on every frame), or `none` (a bare run for benchmarks: manifest only);
a suffix `,kv:digest` stores KV statistics instead of full keys and values (real-size runs), `,kv:off`
no KV stages. On CUDA the copies to the host are non-blocking into pinned memory and a background
thread hashes and writes them, so capture does not stall the GPU.

Stages are addressed by `StageKey(frame, step, family, layer)`; its `id` (`prompt.embedding`,
`f3/step2.velocity`, `f3/kv1.keys`) is the manifest key, and `StageKey.order` is execution order,
which the comparison uses to name the first divergence.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from parity.errors import UserError
from parity.tolerances import FAMILIES

SCHEMA = "waypoint-parity/capture"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1 lacks the native, timestamp and KV stages; it opens, and those stages count as missing."""
MANIFEST = "manifest.json"
PROMPT_FILE = "prompt.safetensors"
FRAMES_DIR = "frames"

LAYOUTS: dict[str, tuple[str, ...]] = {
    "prompt.embedding": ("batch", "token", "channel"),
    "prompt.pad_mask": ("batch", "token"),
    "prompt.native_embedding": ("batch", "token", "channel"),
    "prompt.native_pad_mask": ("batch", "token"),
    "controls.mouse": ("batch", "frame", "axis"),
    "controls.button": ("batch", "frame", "key"),
    "controls.scroll": ("batch", "frame", "sign"),
    "step.sigma": (),
    "step.timestamp": ("batch", "frame"),
    "cache_pass.sigma": (),
    "cache_pass.timestamp": ("batch", "frame"),
    "kv.frames": ("slot",),
    "kv.keys": ("batch", "head", "token", "dim"),
    "kv.values": ("batch", "head", "token", "dim"),
    "decoded": ("y", "x", "rgb"),
}
"""Axis names per family, for locating the worst element; latent-shaped families are below."""
for _family in ("noise.native", "noise", "step.input", "step.velocity", "step.update", "latent", "cache_pass.input", "cache_pass.output"):
    LAYOUTS[_family] = ("batch", "frame", "channel", "y", "x")

V2_FAMILIES = ("prompt.native_embedding", "prompt.native_pad_mask", "noise.native", "step.timestamp", "cache_pass.sigma",
               "cache_pass.timestamp", "kv.frames", "kv.keys", "kv.values")
"""Families added in schema version 2."""

_STEP_RE = re.compile(r"^step(\d+)\.(sigma|timestamp|input|velocity|update)$")
_LAYER_RE = re.compile(r"^kv(\d+)\.(frames|keys|values)$")
_FRAME_POSITION = {f: i for i, f in enumerate(FAMILIES)}


@dataclass(frozen=True)
class StageKey:
    """One captured tensor: `frame` is None for run-level stages (the prompt), `step` is set for
    denoise steps only, `layer` for the per-layer KV stages only."""

    frame: int | None
    step: int | None
    family: str
    layer: int | None = None

    @property
    def tensor_name(self) -> str:
        """Name inside the safetensors file: `step2.velocity`, `kv1.keys`, `noise`, `prompt.embedding`."""
        if self.step is not None:
            return f"step{self.step}.{self.family.split('.', 1)[1]}"
        if self.layer is not None:
            return f"kv{self.layer}.{self.family.split('.', 1)[1]}"
        return self.family

    @property
    def id(self) -> str:
        return self.tensor_name if self.frame is None else f"f{self.frame}/{self.tensor_name}"

    @property
    def order(self) -> tuple[int, int, int, int]:
        """Execution order: prompt, then per frame controls, noise, steps, latent, cache pass, the KV
        cache layer by layer, decode."""
        pos = _FRAME_POSITION[self.family]
        frame = -1 if self.frame is None else self.frame
        if self.step is not None:
            return (frame, 1_000 + self.step, 0, pos)
        if self.layer is not None:
            return (frame, 10_000 + _FRAME_POSITION["kv.frames"], self.layer, pos)
        return (frame, pos if pos < _FRAME_POSITION["step.sigma"] else 10_000 + pos, 0, 0)

    @classmethod
    def from_tensor_name(cls, frame: int | None, name: str) -> "StageKey":
        m = _STEP_RE.match(name)
        if m:
            return cls(frame, int(m.group(1)), f"step.{m.group(2)}")
        m = _LAYER_RE.match(name)
        if m:
            return cls(frame, None, f"kv.{m.group(2)}", int(m.group(1)))
        if name not in FAMILIES or name.startswith(("step.", "kv.")):
            raise ValueError(f"unknown stage {name!r}")
        return cls(frame, None, name)

    @classmethod
    def from_id(cls, stage_id: str) -> "StageKey":
        if "/" in stage_id:
            frame, name = stage_id.split("/", 1)
            return cls.from_tensor_name(int(frame[1:]), name)
        return cls.from_tensor_name(None, stage_id)

    def where(self) -> str:
        """Human form: `frame 3, step 2, step.velocity`, `frame 3, layer 1, kv.keys`."""
        parts = [] if self.frame is None else [f"frame {self.frame}"]
        if self.step is not None:
            parts.append(f"step {self.step}")
        if self.layer is not None:
            parts.append(f"layer {self.layer}")
        return ", ".join(parts + [self.family])


@dataclass
class Protocol:
    """What a side actually did, in the terms both runners share. The comparison diffs these
    field by field before it looks at any tensor (the config diff)."""

    sigmas: list[float]
    """The schedule as used, after rounding to `sigma_dtype`."""
    sigma_dtype: str
    steps: int
    noise_rule: str
    noise_dtype: str
    encoder_class: str
    encoder_dtype: str
    prompt_mask: str
    prompt_source: str
    """`encoded` (this side ran its encoder) or `injected from <run>`."""
    model_dtype: str
    cache_mode: str
    cache_pass: bool
    vae_dtype: str
    decode_input_dtype: str
    latent_scale: float
    latent_shift: float
    strict_load: bool
    native_noise_rule: str = ""
    """Which known rule (`parity.alignment.NATIVE_NOISE_RULES`) the side's own noise draw followed,
    observed frame by frame, whether or not shared noise replaced it."""

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TensorInfo:
    file: str
    shape: list[int]
    dtype: str
    sha256: str
    stats: dict[str, float]


def manifest_value(manifest: dict, dotted: str) -> Any:
    """`manifest_value(m, "protocol.sigmas")`: a nested manifest field, None where any part is absent."""
    data: Any = manifest
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def ran_compiled(manifest: dict) -> bool:
    """Whether the side's model ran under torch.compile (its manifest's `setup.compile`)."""
    return str(manifest_value(manifest, "setup.compile") or "none") != "none"


def tensor_info(t, file: str) -> TensorInfo:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    digest = hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()
    f = flat.to(torch.float64)
    finite = torch.isfinite(f)
    fv = f[finite]
    stats = {
        "min": float(fv.min()) if fv.numel() else float("nan"),
        "max": float(fv.max()) if fv.numel() else float("nan"),
        "mean": float(fv.mean()) if fv.numel() else float("nan"),
        "std": float(fv.std(unbiased=False)) if fv.numel() else float("nan"),
        "nonfinite": int((~finite).sum()),
    }
    return TensorInfo(file, list(t.shape), str(t.dtype).removeprefix("torch."), digest, stats)


def _atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    """Write through a temporary name and rename: a killed process leaves the old file or the new
    one, never half of one. `durable` adds an fsync (survives a machine crash too); frame files skip
    it, since on some file systems it costs more than the frame took to compute."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save

    _atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


SAMPLED_FAMILIES = ("step.input", "step.velocity", "step.update")
"""The per-step latents: 3 x steps tensors a frame, the bulk of a capture; `every:K` thins them."""


KV_MODES = ("full", "digest", "off")


@dataclass(frozen=True)
class CapturePolicy:
    mode: str = "full"
    every: int = 1
    kv: str = "full"
    """KV stages: `full` keys and values, `digest` (per frame and head statistics, for real-size runs), `off`."""

    @classmethod
    def parse(cls, text: str) -> "CapturePolicy":
        head, _, tail = text.partition(",")
        kv = "full"
        if tail:
            if not tail.startswith("kv:") or tail[3:] not in KV_MODES:
                raise UserError(f"capture policy suffix must be kv:full, kv:digest or kv:off, got {tail!r}")
            kv = tail[3:]
        if head in ("full", "none"):
            return cls(head, kv=kv)
        if head.startswith("every:") and head[6:].isdigit() and int(head[6:]) >= 1:
            return cls("every", int(head[6:]), kv)
        raise UserError(f"capture policy must be full, none or every:K (K >= 1), optionally with ,kv:digest or ,kv:off; got {text!r}")

    def keeps(self, frame: int | None, family: str) -> bool:
        if self.mode == "none":
            return False
        if self.kv == "off" and family.startswith("kv."):
            return False
        if self.mode == "every" and family in SAMPLED_FAMILIES and frame is not None:
            return frame % self.every == 0
        return True

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "every": self.every, "sampled_families": list(SAMPLED_FAMILIES) if self.mode == "every" else [],
                "kv": self.kv}

    def text(self) -> str:
        """The `--capture` text that parses back to this policy."""
        head = f"every:{self.every}" if self.mode == "every" else self.mode
        return head if self.kv == "full" else f"{head},kv:{self.kv}"

    @classmethod
    def from_manifest(cls, manifest: dict) -> "CapturePolicy":
        d = manifest.get("capture") or {}
        return cls(d.get("mode", "full"), int(d.get("every", 1)), d.get("kv", "full"))


class CaptureWriter:
    """Writes one run folder. Runners call `record_prompt` once, then `frame(i)` per frame:

        with writer.frame(3) as rec:
            rec["noise"] = x
            rec[StageKey(3, 0, "step.velocity").tensor_name] = v

    The folder must not exist yet (or be empty); nothing already on disk is overwritten.
    """

    policy: CapturePolicy = CapturePolicy()
    _background: "_BackgroundWriter | None" = None

    def __init__(self, run_dir: str | Path, header: dict[str, Any], policy: CapturePolicy | None = None,
                 background: bool = False):
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and (not self.run_dir.is_dir() or any(self.run_dir.iterdir())):
            raise UserError("run folder already exists and is not empty; choose another --out or remove it", self.run_dir)
        (self.run_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
        self.policy = policy or CapturePolicy()
        self.manifest: dict[str, Any] = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "complete": False,
            "frames_written": 0,
            **header,
            "capture": self.policy.describe(),
            "tensors": {},
        }
        self._write_manifest()
        if background:
            self._background = _BackgroundWriter(self)

    def set(self, key: str, value: Any) -> None:
        """Add or replace a manifest field (e.g. `protocol`, known only once the model is loaded)."""
        self.flush()
        self.manifest[key] = value
        self._write_manifest()

    def flush(self) -> None:
        """Wait until every committed frame is on disk (a no-op without the background writer)."""
        if self._background is not None:
            self._background.flush()

    def record_prompt(self, embedding, pad_mask, native: tuple | None = None) -> None:
        """The prompt the model was given; `native` = (embedding, pad_mask) of the side's own text
        stage on the case's prompt, when it ran."""
        tensors = {"prompt.embedding": _to_cpu(embedding), "prompt.pad_mask": _to_cpu(pad_mask)}
        if native is not None:
            tensors.update({"prompt.native_embedding": _to_cpu(native[0]), "prompt.native_pad_mask": _to_cpu(native[1])})
        _save_tensors(tensors, self.run_dir / PROMPT_FILE)
        for name, t in tensors.items():
            self.manifest["tensors"][name] = asdict(tensor_info(t, PROMPT_FILE))
        self._write_manifest()

    def frame(self, index: int, part: str | None = None) -> "FrameRecorder":
        """Frame `index`'s stages; `part` names a later addition to an already written frame (its own
        file `frames/<index>.<part>.safetensors`), for pipelines that finish a frame's stages later."""
        if part is not None and not part.isidentifier():
            raise ValueError(f"frame part must be a plain name, got {part!r}")
        return FrameRecorder(self, index, part)

    def _commit_frame(self, index: int, tensors: dict, ready=None, part: str | None = None, notes: dict | None = None) -> None:
        for name in tensors:
            StageKey.from_tensor_name(index, name)  # rejects a misspelt stage before it is written
        if self._background is not None:
            self._background.put(index, tensors, ready, part, notes)
        else:
            self._write_frame(index, tensors, part, notes)

    def _write_frame(self, index: int, tensors: dict, part: str | None = None, notes: dict | None = None) -> None:
        stem = f"{index:06d}" if part is None else f"{index:06d}.{part}"
        rel = f"{FRAMES_DIR}/{stem}.safetensors"
        if tensors:
            _save_tensors(tensors, self.run_dir / rel)
        infos = {StageKey.from_tensor_name(index, name).id: asdict(tensor_info(t, rel)) for name, t in tensors.items()}
        record = {"frame": index, "tensors": infos}
        if part is not None:
            record["part"] = part
        if notes:
            record["notes"] = notes
        _atomic_write_bytes(self.run_dir / FRAMES_DIR / f"{stem}.json", json.dumps(record, default=_json_default).encode())
        self.manifest["tensors"].update(infos)
        if notes:
            self.manifest.setdefault("frame_notes", {}).setdefault(str(index), {}).update(notes)
        if part is None:
            self.manifest["frames_written"] = max(int(self.manifest.get("frames_written", 0)), index + 1)

    def close(self, complete: bool = True, **extra: Any) -> Path:
        if self._background is not None:
            self._background.close()
        self.manifest.update(extra)
        self.manifest["complete"] = complete
        self._write_manifest()
        return self.run_dir

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1, sort_keys=False, default=_json_default)
        _atomic_write_bytes(self.run_dir / MANIFEST, text.encode(), durable=True)


class FrameRecorder:
    def __init__(self, writer: CaptureWriter, index: int, part: str | None = None):
        self.writer, self.index, self.part, self.tensors = writer, index, part, {}
        self.notes: dict[str, Any] = {}
        self._cuda = False

    def note(self, key: str, value: Any) -> None:
        """A JSON fact about this frame kept beside its tensors (`Capture.frame_note`)."""
        self.notes[key] = value

    def __setitem__(self, name: str, tensor) -> None:
        if not self.writer.policy.keeps(self.index, StageKey.from_tensor_name(self.index, name).family):
            return
        if self.writer._background is not None and tensor.is_cuda:
            # Pinned host buffer, copy queued on the current stream: the GPU is never waited on here.
            host = _pinned_empty(tensor)
            host.copy_(tensor.detach(), non_blocking=True)
            self.tensors[name] = host
            self._cuda = True
        else:
            self.tensors[name] = _to_cpu(tensor)

    def __enter__(self) -> "FrameRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            ready = None
            if self._cuda:
                import torch

                ready = torch.cuda.Event()
                ready.record()
            self.writer._commit_frame(self.index, self.tensors, ready, self.part, self.notes)


class _BackgroundWriter:
    """One thread that waits for each frame's copies, then hashes and writes it, in frame order.
    The queue is bounded so a slow disk applies back-pressure instead of filling host memory; an
    error in the thread is raised in the runner at its next commit or at close."""

    DEPTH = 4

    def __init__(self, writer: CaptureWriter):
        import queue
        import threading

        self.writer = writer
        self.queue: "queue.Queue" = queue.Queue(maxsize=self.DEPTH)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="capture-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                index, tensors, ready, part, notes = item
                if ready is not None:
                    ready.synchronize()
                if self.error is None:
                    self.writer._write_frame(index, tensors, part, notes)
            except BaseException as exc:  # handed to the runner's thread
                self.error = exc
            finally:
                self.queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def put(self, index: int, tensors: dict, ready, part=None, notes=None) -> None:
        self._raise()
        self.queue.put((index, tensors, ready, part, notes))

    def flush(self) -> None:
        self.queue.join()
        self._raise()

    def close(self) -> None:
        self.queue.join()
        self.queue.put(None)
        self.thread.join()
        self._raise()


def _pinned_empty(t):
    import torch

    return torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)


def _to_cpu(t):
    # A copy, never a view: the pipeline updates latents in place on some paths.
    return t.detach().to("cpu", copy=True)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Capture:
    """A run folder opened for reading. `Capture.open(path)` validates the manifest; each tensor
    is checked against its recorded sha256 when it is loaded.

        cap = Capture.open("reports/run/upstream")
        cap.keys()                                    # StageKeys in execution order
        cap.tensor(StageKey(0, 2, "step.velocity"))   # torch tensor, hash-checked
    """

    def __init__(self, run_dir: Path, manifest: dict[str, Any]):
        self.run_dir, self.manifest = run_dir, manifest
        self._cache: dict[str, dict] = {}

    @classmethod
    def open(cls, run_dir: str | Path) -> "Capture":
        run_dir = Path(run_dir)
        path = run_dir / MANIFEST
        if not path.is_file():
            raise UserError(f"not a capture: {MANIFEST} is missing", run_dir)
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"manifest is not valid JSON ({exc})", path) from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise UserError(f"not a waypoint-parity capture manifest (schema {manifest.get('schema') if isinstance(manifest, dict) else None!r})", path)
        version = manifest.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise UserError(f"capture schema version {version!r} is not supported (this harness reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}); re-run the capture", path)
        tensors = manifest.get("tensors")
        if not isinstance(tensors, dict):
            raise UserError("manifest has no 'tensors' table", path)
        if not manifest.get("complete"):
            _merge_sidecars(run_dir, manifest)
        if (manifest.get("capture") or {}).get("mode") == "none":
            raise UserError("this run was made with capture policy none (a bare benchmark run); it holds no tensors to compare", path)
        present: set[str] = set()  # ~80 stages share a frame's file: each file is looked up once
        for stage_id, info in tensors.items():
            try:
                StageKey.from_id(stage_id)
            except ValueError:
                raise UserError(f"manifest names an unknown stage {stage_id!r}", path) from None
            file = info.get("file", "")
            if file not in present:
                if not (run_dir / file).is_file():
                    raise UserError(f"stage {stage_id} points at missing file {info.get('file')!r}", path)
                present.add(file)
        return cls(run_dir, manifest)

    @property
    def name(self) -> str:
        return self.manifest.get("side") or self.run_dir.name

    @property
    def policy(self) -> CapturePolicy:
        return CapturePolicy.from_manifest(self.manifest)

    def sampled_out(self, key: StageKey) -> bool:
        """True when this capture left `key` out on purpose (not a divergence): its policy, a schema
        version without that family, a native prompt that could not run (no encoder), a KV cache
        whose layout the harness cannot read."""
        if not self.policy.keeps(key.frame, key.family):
            return True
        if int(self.manifest.get("schema_version", SCHEMA_VERSION)) < 2 and key.family in V2_FAMILIES:
            return True
        if key.family.startswith("prompt.native_") and manifest_value(self.manifest, "native_prompt.ran") is False:
            return True
        return key.family.startswith("kv.") and "kv_layout" in self.manifest and self.manifest["kv_layout"] is None

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def protocol(self) -> dict[str, Any]:
        return self.manifest.get("protocol", {})

    def keys(self) -> list[StageKey]:
        return sorted((StageKey.from_id(k) for k in self.manifest["tensors"]), key=lambda k: k.order)

    def info(self, key: StageKey) -> dict[str, Any]:
        return self.manifest["tensors"][key.id]

    def tensor(self, key: StageKey):
        info = self.info(key)
        file = info["file"]
        if file not in self._cache:
            self._cache = {file: self._load_file(file)}  # one frame at a time keeps memory flat
        return self._checked(key, self._cache[file])

    def tensors(self, keys: list[StageKey]) -> dict[StageKey, Any]:
        """Several stages at once, each file opened once and only these stages read from it, no
        shared cache: safe from worker threads (the report reads 2 of a frame's ~80 stages)."""
        by_file: dict[str, list[StageKey]] = {}
        for key in keys:
            by_file.setdefault(self.info(key)["file"], []).append(key)
        out = {}
        for file, members in by_file.items():
            tensors = self._load_file(file, [k.tensor_name for k in members])
            out.update((k, self._checked(k, tensors)) for k in members)
        return {k: out[k] for k in keys}

    def _checked(self, key: StageKey, tensors: dict):
        import torch

        info = self.info(key)
        file = info["file"]
        if key.tensor_name not in tensors:
            raise UserError(f"stage {key.id} is listed in the manifest but missing from the file", self.run_dir / file)
        t = tensors[key.tensor_name]
        digest = hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
        if digest != info["sha256"]:
            raise UserError(f"stage {key.id} does not match its recorded sha256; the capture is corrupt", self.run_dir / file)
        return t

    def _load_file(self, file: str, names: list[str] | None = None) -> dict:
        """The tensors of `file` (only `names`, where given and present)."""
        from safetensors import safe_open

        path = self.run_dir / file
        try:
            with safe_open(path, framework="pt") as fh:
                present = set(fh.keys())
                return {n: fh.get_tensor(n) for n in (present if names is None else names) if n in present}
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise UserError(f"cannot read tensors ({type(exc).__name__}: {exc})", path) from None

    def frames(self) -> Iterator[int]:
        return iter(range(int(self.manifest.get("frames_written", 0))))

    def frame_note(self, frame: int, key: str) -> Any:
        """A note the runner kept beside frame `frame` (None when absent)."""
        return ((self.manifest.get("frame_notes") or {}).get(str(frame)) or {}).get(key)


def _merge_sidecars(run_dir: Path, manifest: dict) -> None:
    """An unfinished run's manifest was last written before its frames: add each frame's sidecar,
    in order, up to the first frame that is missing, then the later parts of those frames."""
    written = int(manifest.get("frames_written", 0))
    frame = written
    while (run_dir / FRAMES_DIR / f"{frame:06d}.json").is_file():
        _merge_one(run_dir / FRAMES_DIR / f"{frame:06d}.json", frame, manifest)
        frame += 1
    manifest["frames_written"] = max(written, frame)
    for sidecar in sorted((run_dir / FRAMES_DIR).glob("*.*.json")):
        index = sidecar.name.split(".", 1)[0]
        if index.isdigit() and int(index) < manifest["frames_written"]:
            _merge_one(sidecar, int(index), manifest)


def _merge_one(sidecar: Path, frame: int, manifest: dict) -> None:
    try:
        data = json.loads(sidecar.read_text())
        infos = data["tensors"]
        if not isinstance(infos, dict) or data.get("frame") != frame:
            raise ValueError("frame number or tensor table is wrong")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"frame sidecar is damaged ({exc})", sidecar) from None
    manifest["tensors"].update(infos)
    if isinstance(data.get("notes"), dict):
        manifest.setdefault("frame_notes", {}).setdefault(str(frame), {}).update(data["notes"])
