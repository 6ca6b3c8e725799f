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
"""Overworld name pattern -> FastVideo name (the renames FastVideo applies on load)."""


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
    names_b = {n: j for j, (n, _) in enumerate(records_b)}
    pairs, used_b = [], set()
    for i, (name, _) in enumerate(records_a):
        mapped = name
        for pattern, repl in NAME_MAP:
            mapped = re.sub(pattern, repl, mapped)
        for candidate, how in ((mapped, "name map"), (name, "name")):
            j = names_b.get(candidate)
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
                ld.model(x=a.tensor(key).to(device=device, dtype=dtype), sigma=torch.zeros((1, 1), device=device), kv_cache=cache, **inputs(f, dtype))
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
        s = torch.zeros((1, 1), device=device) if sigma is None else sigma.reshape(1, 1).to(device)
        x = a.tensor(x_key).to(device=device, dtype=dtype)
        records.append(record_call(ld.model, lambda ld=ld, x=x, s=s, dtype=dtype, cache=cache: ld.model(x=x, sigma=s, kv_cache=cache, **inputs(frame, dtype))))
    return compare_records(stage, records[0], records[1], calls)
