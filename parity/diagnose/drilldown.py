"""Module drill-down: which submodule of a divergent model call diverges first.

Only the divergent call is rerun, on both sides, with the same inputs (A's captured step input,
sigma, controls and prompt) and a KV cache rebuilt from A's trajectory (A's cache-pass inputs
replayed through each side's own model: one extra forward per earlier frame). Forward hooks on every
submodule clone its output; submodules are matched by an explicit name map (the known Waypoint
renames), then by identical name, then by execution order among modules whose output shape agrees;
the rest are listed as unmatched. In execution order (a hook fires when its module returns, so
children come before their parents), the first matched pair whose rel_l2 exceeds the floor is named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.capture import Capture, StageKey
from parity.errors import UserError
from parity.metrics import compare_arrays
from parity.tolerances import default_tolerance

NAME_MAP: tuple[tuple[str, str], ...] = (
    (r"\.mlp\.fc1$", ".mlp.fc_in"),
    (r"\.mlp\.fc2$", ".mlp.fc_out"),
)
"""Overworld name pattern -> FastVideo name (the renames FastVideo applies on load). Read off
`named_modules()` of world_engine 208c909 `WorldModel` and FastVideo `WaypointWorldModel` at
12c99dd42 and 640e654f3 on the tiny real-architecture checkpoint: every other module has the same
name on both sides (`denoise_step_emb`, `ctrl_emb`, `transformer.blocks.N.{attn,mlp,cond_head,
prompt_cross_attn,ctrl_mlpfusion}`, `patchify`, `unpatchify`, `out_norm`); FastVideo's MLPs add an
`.act` (SiLU) module world_engine calls as a function, left unmatched."""


@dataclass
class ModuleDiff:
    name_a: str
    name_b: str
    shape: list[int]
    rel_l2: float
    max_abs: float
    floor: float
    matched_by: str

    @property
    def diverges(self) -> bool:
        return self.rel_l2 > self.floor


@dataclass
class DrillDown:
    stage: StageKey
    first: ModuleDiff | None
    modules: list[ModuleDiff] = field(default_factory=list)
    unmatched_a: list[str] = field(default_factory=list)
    unmatched_b: list[str] = field(default_factory=list)
    calls: int = 0
    """Forward calls rerun per side (the divergent call plus cache replays)."""

    def to_dict(self) -> dict[str, Any]:
        def row(m: ModuleDiff):
            return {"a": m.name_a, "b": m.name_b, "shape": m.shape, "rel_l2": m.rel_l2, "max_abs": m.max_abs,
                    "floor": m.floor, "matched_by": m.matched_by, "diverges": m.diverges}

        return {"stage": self.stage.id, "first_divergent_module": row(self.first) if self.first else None,
                "modules": [row(m) for m in self.modules], "unmatched_a": self.unmatched_a,
                "unmatched_b": self.unmatched_b, "calls_per_side": self.calls}


def record_call(model, call) -> list[tuple[str, Any]]:
    """Run `call()` with a forward hook on every submodule; -> [(name, output clone)] in completion order."""
    import torch

    records: list[tuple[str, Any]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _inp, out, name=name):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(t, torch.Tensor):
                records.append((name, t.detach().clone()))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            call()
    finally:
        for h in handles:
            h.remove()
    return records


def match(records_a, records_b) -> tuple[list[tuple[int, int, str]], list[str], list[str]]:
    """Pairs of indices (into a, b) and how they were matched; then unmatched names of each side."""
    # A module called several times in one forward (world_engine's RoPE shared by every block) records
    # one name several times: the k-th call on one side pairs with the k-th call of that name on the other.
    names_b: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = {}
    for j, (n, _) in enumerate(records_b):
        names_b[(n, seen.get(n, 0))] = j
        seen[n] = seen.get(n, 0) + 1
    seen = {}
    pairs, used_b = [], set()
    for i, (name, _) in enumerate(records_a):
        k = seen.get(name, 0)
        seen[name] = k + 1
        mapped = name
        for pattern, repl in NAME_MAP:
            mapped = re.sub(pattern, repl, mapped)
        for candidate, how in ((mapped, "name map"), (name, "name")):
            j = names_b.get((candidate, k))
            if j is not None and j not in used_b and (how == "name" or candidate != name):
                pairs.append((i, j, how))
                used_b.add(j)
                break
    matched_a = {i for i, _, _ in pairs}
    # By order and shape: walk both leftovers in execution order.
    rest_b = [j for j in range(len(records_b)) if j not in used_b]
    for i in range(len(records_a)):
        if i in matched_a:
            continue
        shape = tuple(records_a[i][1].shape)
        for k, j in enumerate(rest_b):
            if tuple(records_b[j][1].shape) == shape:
                pairs.append((i, j, "order+shape"))
                matched_a.add(i)
                used_b.add(j)
                del rest_b[k]
                break
    pairs.sort()
    unmatched_a = [records_a[i][0] for i in range(len(records_a)) if i not in matched_a]
    unmatched_b = [records_b[j][0] for j in range(len(records_b)) if j not in used_b]
    return pairs, unmatched_a, unmatched_b


def compare_records(stage: StageKey, records_a, records_b, calls: int, floor_scale: float = 1.0) -> DrillDown:
    pairs, unmatched_a, unmatched_b = match(records_a, records_b)
    diffs = []
    for i, j, how in pairs:
        (na, ta), (nb, tb) = records_a[i], records_b[j]
        if ta.shape != tb.shape:
            continue
        m = compare_arrays(ta, tb)
        dtype = str(ta.dtype).removeprefix("torch.")
        floor = default_tolerance("step.velocity", dtype, str(tb.dtype).removeprefix("torch.")).rel_l2 * floor_scale
        diffs.append(ModuleDiff(na, nb, list(ta.shape), m.rel_l2, m.max_abs, floor, how))
    first = next((d for d in diffs if d.diverges), None)
    return DrillDown(stage, first, diffs, unmatched_a, unmatched_b, calls)


MODEL_CALLS = ("step.velocity", "step.update", "step.input", "cache_pass.output")


def first_model_call_divergence(result):
    """The earliest model call whose values exceed the tolerance (what a drill-down can open), or None;
    earlier failures at stages that are not model calls (a native prompt encoding) are skipped."""
    return next((s for s in result.stages if s.status == "fail" and s.key.family in MODEL_CALLS), None)


def parse_stage(text: str) -> StageKey:
    """A stage id such as `f0/step0.velocity` that names a model call; UserError otherwise."""
    try:
        key = StageKey.from_id(text)
    except (ValueError, IndexError):
        raise UserError(f"bad stage id {text!r}; expected e.g. f0/step0.velocity or f2/cache_pass.output") from None
    if key.frame is None or key.family not in MODEL_CALLS:
        raise UserError(f"stage {text!r} is not a model call; drill-down needs fN/stepK.velocity or fN/cache_pass.output")
    return key


def runner_name(cap: Capture) -> str | None:
    return cap.manifest.get("runner", {}).get("name")


def drill_down(stage: StageKey, a_dir: Path, b_dir: Path, trust_remote_code: bool = False, device: str = "cpu") -> DrillDown:
    """Reference vs reference, or reference (A) vs FastVideo (B)."""
    names = (runner_name(Capture.open(a_dir)), runner_name(Capture.open(b_dir)))
    if names == ("reference", "reference"):
        return drill_down_reference(stage, a_dir, b_dir, trust_remote_code, device)
    if names == ("reference", "fastvideo"):
        return drill_down_fastvideo(stage, a_dir, b_dir, trust_remote_code, device)
    raise UserError(f"drill-down needs A from the reference runner and B from the reference or FastVideo runner; "
                    f"got A={names[0]}, B={names[1]}")


def _load_reference(cap: Capture, trust_remote_code: bool, device: str):
    """(loaded snapshot, options, dtype, cache) rebuilt from a reference capture's manifest."""
    import torch

    from reference.options import resolve_options
    from reference.runner import ReferenceRunner

    info = cap.manifest.get("runner", {})
    if info.get("name") != "reference":
        raise UserError("drill-down reruns reference-runner captures only; this one came from " + str(info.get("name")), cap.run_dir)
    profile = info.get("profile", "upstream")
    options = resolve_options(profile, dict(cap.manifest["options"]))
    runner = ReferenceRunner(cap.manifest["model"]["snapshot"], profile, trust_remote_code=trust_remote_code,
                             code_source=info.get("code_source", "snapshot"))
    ld = runner.load(options, device)
    dtype = getattr(torch, options.model_dtype)
    cache = ld.cache_class(ld.config, 1, dtype) if options.cache_mode == "ring" else None
    return ld, options, dtype, cache


def drill_down_fastvideo(stage: StageKey, a_dir: Path, b_dir: Path, trust_remote_code: bool = False,
                         device: str = "cpu") -> DrillDown:
    """Drill into a divergent model call of a FastVideo capture (B) against a reference capture (A).

    FastVideo's transformer is rebuilt as its runner builds it (`FastVideoRunner.transformer_session`:
    same bundle, precision and attention options). Both KV caches are rebuilt from A's trajectory:
    A's `cache_pass.input` latents of the earlier frames go through each side's own cache pass
    (FastVideo's: its own cache object, unfrozen for the pass). Then the divergent call runs once on
    each side on A's inputs (step input, sigma, timestamp, controls, prompt), with hooks on every submodule.
    """
    import torch

    from parity.fastvideo.runner import FastVideoRunner

    if stage.family not in MODEL_CALLS:
        raise UserError(f"stage {stage.id} is not a model call; drill-down needs step.velocity or cache_pass.output")
    a, b = Capture.open(a_dir), Capture.open(b_dir)
    if runner_name(b) != "fastvideo":
        raise UserError("B is not a FastVideo capture", b.run_dir)
    ld, options, dtype, cache = _load_reference(a, trust_remote_code, device)
    frame = stage.frame
    emb = a.tensor(StageKey(None, None, "prompt.embedding"))
    mask = a.tensor(StageKey(None, None, "prompt.pad_mask"))

    def controls(f):
        return {n: a.tensor(StageKey(f, None, f"controls.{n}")) for n in ("mouse", "button", "scroll")}

    def ref_inputs(f):
        ctl = {k: v.to(device=device, dtype=dtype) for k, v in controls(f).items()}
        return dict(frame_timestamp=torch.tensor([[f]], dtype=torch.long, device=device), prompt_emb=emb.to(device=device, dtype=dtype),
                    prompt_pad_mask=mask.to(device), **ctl)

    fv_options = {k: v for k, v in b.manifest.get("options", {}).items() if v is not None}
    runner = FastVideoRunner(bundle=b.manifest["model"]["bundle"])
    frames = int(b.manifest.get("case", {}).get("frames") or frame + 1)
    if stage.family == "cache_pass.output":
        x_key, sigma = StageKey(frame, None, "cache_pass.input"), None
    else:
        x_key, sigma = StageKey(frame, stage.step, "step.input"), a.tensor(StageKey(frame, stage.step, "step.sigma"))
    x = a.tensor(x_key)
    calls = 1
    with runner.transformer_session(fv_options, device) as fv, torch.no_grad():
        fv.reset(emb, mask, frames)
        for f in range(frame):
            key = StageKey(f, None, "cache_pass.input")
            if key.id not in a.manifest["tensors"]:
                break  # A has no cache passes: both sides run without history
            if cache is not None and options.cache_pass:
                cache.set_frozen(False)
                ld.model(x=a.tensor(key).to(device=device, dtype=dtype), sigma=torch.zeros((1, 1), device=device, dtype=getattr(torch, options.sigma_dtype)), kv_cache=cache, **ref_inputs(f))
                cache.set_frozen(True)
            fv.cache_pass(a.tensor(key), f, controls(f))
            calls += 1
        if cache is not None:
            cache.set_frozen(sigma is not None)
        s = torch.zeros((1, 1), device=device, dtype=getattr(torch, options.sigma_dtype)) if sigma is None else sigma.reshape(1, 1).to(device)
        xa = x.to(device=device, dtype=dtype)
        rec_a = record_call(ld.model, lambda: ld.model(x=xa, sigma=s, kv_cache=cache, **ref_inputs(frame)))
        if sigma is None:
            rec_b = record_call(fv.model, lambda: fv.cache_pass(x, frame, controls(frame)))
        else:
            rec_b = record_call(fv.model, lambda: fv.denoise(x, float(sigma.float().reshape(-1)[0]), frame, stage.step, controls(frame)))
    return compare_records(stage, rec_a, rec_b, calls)


def drill_down_reference(stage: StageKey, a_dir: Path, b_dir: Path, trust_remote_code: bool = False, device: str = "cpu") -> DrillDown:
    """Drill into a divergent model call between two reference-runner captures."""
    import torch

    from reference.options import resolve_options
    from reference.runner import ReferenceRunner

    if stage.family not in ("step.velocity", "step.update", "step.input", "cache_pass.output"):
        raise UserError(f"stage {stage.id} is not a model call; drill-down needs step.velocity or cache_pass.output")
    a, b = Capture.open(a_dir), Capture.open(b_dir)
    frame = stage.frame
    loaded, caches = [], []
    for cap in (a, b):
        runner_info = cap.manifest.get("runner", {})
        if runner_info.get("name") != "reference":
            raise UserError("drill-down reruns reference-runner captures only; this one came from " + str(runner_info.get("name")), cap.run_dir)
        options = resolve_options(runner_info.get("profile", "upstream"), {k: v for k, v in cap.manifest["options"].items()})
        runner = ReferenceRunner(cap.manifest["model"]["snapshot"], runner_info.get("profile", "upstream"), trust_remote_code=trust_remote_code)
        ld = runner.load(options, device)
        dtype = getattr(torch, options.model_dtype)
        cache = ld.cache_class(ld.config, 1, dtype) if options.cache_mode == "ring" else None
        loaded.append((ld, options, dtype))
        caches.append(cache)

    emb = a.tensor(StageKey(None, None, "prompt.embedding"))
    mask = a.tensor(StageKey(None, None, "prompt.pad_mask")).to(device)

    def inputs(f, dtype):
        ctl = {n: a.tensor(StageKey(f, None, f"controls.{n}")).to(device=device, dtype=dtype) for n in ("mouse", "button", "scroll")}
        return dict(frame_timestamp=torch.tensor([[f]], dtype=torch.long, device=device), prompt_emb=emb.to(device=device, dtype=dtype),
                    prompt_pad_mask=mask, mouse=ctl["mouse"], button=ctl["button"], scroll=ctl["scroll"])

    calls = 1
    with torch.no_grad():
        for f in range(frame):
            key = StageKey(f, None, "cache_pass.input")
            if key.id not in a.manifest["tensors"]:
                break  # A has no cache passes: both sides run without history
            for (ld, options, dtype), cache in zip(loaded, caches):
                if cache is None or not options.cache_pass:
                    continue
                cache.set_frozen(False)
                ld.model(x=a.tensor(key).to(device=device, dtype=dtype), sigma=torch.zeros((1, 1), device=device, dtype=getattr(torch, options.sigma_dtype)), kv_cache=cache, **inputs(f, dtype))
                cache.set_frozen(True)
            calls += 1

    if stage.family == "cache_pass.output":
        x_key, sigma = StageKey(frame, None, "cache_pass.input"), None
    else:
        x_key, sigma = StageKey(frame, stage.step, "step.input"), a.tensor(StageKey(frame, stage.step, "step.sigma"))
    records = []
    for (ld, options, dtype), cache in zip(loaded, caches):
        if cache is not None:
            cache.set_frozen(sigma is not None)
        s = torch.zeros((1, 1), device=device, dtype=getattr(torch, options.sigma_dtype)) if sigma is None else sigma.reshape(1, 1).to(device)
        x = a.tensor(x_key).to(device=device, dtype=dtype)
        records.append(record_call(ld.model, lambda ld=ld, x=x, s=s, dtype=dtype, cache=cache: ld.model(x=x, sigma=s, kv_cache=cache, **inputs(frame, dtype))))
    return compare_records(stage, records[0], records[1], calls)
