"""Structure of the two live models, described by each runner and diffed before any stage.

    description = describe({"transformer": model, "vae": vae}, cache=kv_cache)   # in a runner, after
    write(run_dir, description)                                                  # its dtype setup
    diff = diff_captures(capture_a, capture_b)      # compare: StructureDiff, listed, not judged
    diff.findings                                   # what differs, what is designed, what is only noted

A description (`structure.json` beside manifest.json) holds, per component (transformer, VAE):
- every module (qualified name, class) and every parameter and buffer (shape, dtype, a checksum of the
  values rounded to bf16 so two loads of one checkpoint compare equal across dtypes, tied names);
- per module the attributes that change numerics, each with how it was obtained:
  `heads`, `kv heads`, `head size` (attribute, or probed: the q tensor that reaches the attention
  kernel on a small probe input), `norm eps` (probed: every norm-named function a module's forward calls,
  measured on a +-a input in the module's dtype, or the eps its call site passes explicitly; norm
  modules are probed themselves), `RoPE table` (probed: the rotary module applied to a pair basis at
  fixed positions gives cos and sin);
- the KV cache per layer (`frames kept`, `dilation`), from the runner's own cache object or the
  model module's `*KVCache` class built on the meta device.
Names are matched across sides by exact name, then by each side's `param_names_mapping` (FastVideo's
rename table) and the `.mlp.fc1`/`.mlp.fc2` <-> `.mlp.fc_in`/`.mlp.fc_out` spelling.

Findings have a kind: `differs` (changes numerics: shape, dtype of part of a component, eps, heads,
head size, RoPE table, window, dilation, loaded values), `designed` (a whole component in another
dtype: the sides' precision policies, already in the config diff), `info` (parameter-free modules or
buffers on one side only: code that computes in forward what the other side keeps in a buffer).
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import math
import re
import sys
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import UserError

SCHEMA = "waypoint-parity/structure"
SCHEMA_VERSION = 1
STRUCTURE_FILE = "structure.json"

DIFFERS, DESIGNED, INFO = "differs", "designed", "info"

FALLBACK_RENAMES: tuple[tuple[str, str], ...] = ((".mlp.fc1.", ".mlp.fc_in."), (".mlp.fc2.", ".mlp.fc_out."))
"""Overworld spelling -> FastVideo spelling, used when a description records no mapping of its own."""

_HEAD_ATTRS = {
    "heads": ("n_heads", "num_heads", "num_attention_heads", "heads"),
    "kv heads": ("n_kv_heads", "num_kv_heads", "num_key_value_heads"),
    "head size": ("d_head", "head_dim", "head_size", "dim_head", "attention_head_dim"),
}
_Q_NAMES = ("q_proj", "q", "to_q", "query", "qkv", "wq")
_EPS_REL = 0.05
"""Two measured eps values are the same when they agree within 5% (a bf16 probe resolves ~1%)."""
_ROPE_TOL = 1e-4
"""Two RoPE tables agree within 1e-4: fp32 rounding of equal frequencies moves cos/sin by up to
t * 1.2e-7 (t <= 100 probed); a wrong spectrum or position moves them by 1e-2 or more."""


# ---- describing a live model ------------------------------------------------------------------


def describe(components: dict[str, Any], *, cache=None, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """The structure description of live modules (call it after the pipeline's own dtype setup).
    `components`: name -> module (objects that wrap one, like world_engine's decoder with `ae_model`,
    are unwrapped). `cache`: the KV cache the run uses, if the runner has one; otherwise the
    transformer module's own `*KVCache` class is built on the meta device where it can be."""
    import torch

    out: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "components": {}, "notes": []}
    mapping = dict(renames or {})
    with torch.no_grad():
        for name, obj in components.items():
            module = _as_module(obj)
            if module is None:
                out["notes"].append(f"{name}: {type(obj).__name__} is not a torch module; not described")
                continue
            mapping.update(getattr(module, "param_names_mapping", None) or {})
            try:
                out["components"][name] = _describe_module(module)
            except Exception as exc:  # describing must never cost the run; the diff says what is missing
                out["notes"].append(f"{name}: not described ({type(exc).__name__}: {exc})")
        transformer = _as_module(components.get("transformer"))
        try:
            out["kv_cache"] = _describe_cache(cache, transformer)
        except Exception as exc:
            out["kv_cache"] = {"layers": None, "how": f"not described ({type(exc).__name__}: {exc})"}
    out["renames"] = mapping
    return out


def write(run_dir: str | Path, description: dict[str, Any]) -> Path:
    path = Path(run_dir) / STRUCTURE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(description, indent=1, default=str))
    tmp.replace(path)
    return path


def read(run_dir: str | Path) -> dict[str, Any] | None:
    """The description in a capture, None for a capture made without one (older captures)."""
    path = Path(run_dir) / STRUCTURE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"structure description is not valid JSON ({exc})", path) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("components"), dict):
        raise UserError("not a waypoint-parity structure description", path)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"structure schema version {data.get('schema_version')!r} is not supported "
                        f"(this harness reads version {SCHEMA_VERSION})", path)
    for name, comp in data["components"].items():
        if not isinstance(comp, dict) or not all(isinstance(comp.get(k), dict) for k in ("modules", "parameters", "buffers")):
            raise UserError(f"structure description of {name!r} lacks its modules, parameters or buffers table", path)
    return data


def _as_module(obj):
    import torch

    if obj is None:
        return None
    if isinstance(obj, torch.nn.Module):
        return obj
    inner = getattr(obj, "ae_model", None) or getattr(obj, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else None


def _describe_module(root) -> dict[str, Any]:
    import torch

    persistent = set(root.state_dict().keys())
    first_name: dict[int, str] = {}
    params, buffers, modules = {}, {}, {}
    for name, p in root.named_parameters(remove_duplicate=False):
        params[name] = _tensor_entry(p, first_name.setdefault(id(p), name), name)
    for name, b in root.named_buffers(remove_duplicate=False):
        entry = _tensor_entry(b, first_name.setdefault(id(b), name), name)
        entry["persistent"] = name in persistent
        buffers[name] = entry
    dtypes = _module_dtypes(root)
    probes = _ProbeCache()
    for name, m in root.named_modules():
        attrs: dict[str, dict[str, Any]] = {}
        dtype = dtypes.get(name, torch.float32)
        _head_attributes(m, attrs, dtype)
        _norm_attributes(m, attrs, dtype, probes)
        modules[name] = {"class": f"{type(m).__module__}.{type(m).__qualname__}", "dtype": _dtype_name(dtype),
                         "attributes": attrs}
    _rope_attributes(root, modules)
    return {"class": modules[""]["class"], "modules": modules, "parameters": params, "buffers": buffers}


def _tensor_entry(t, first: str, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype), "checksum": _checksum(t)}
    if first != name:
        entry["tied_to"] = first
    return entry


def _checksum(t) -> list[float] | None:
    """(position-weighted sum, sum of |v|) of the values rounded to bf16, in float64: equal for two
    loads of one checkpoint whatever dtype each keeps, different for other or transposed values."""
    import torch

    if t.is_meta or not (t.is_floating_point() or t.is_complex()):
        return None
    v = t.detach().to(torch.bfloat16).to(torch.float64).reshape(-1)
    w = torch.cos(torch.arange(v.numel(), device=v.device, dtype=torch.float64) * 0.6180339887)
    return [float((v * w).sum()), float(v.abs().sum())]


def _module_dtypes(root) -> dict[str, Any]:
    """Per module the dtype its code computes in: its first floating parameter or buffer, else its
    parent's (parameter-free helpers run in their parent's dtype)."""
    import torch

    out: dict[str, Any] = {}
    for name, m in root.named_modules():
        own = next((t.dtype for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
                    if t.is_floating_point()), None)
        if own is None:
            own = next((t.dtype for t in m.parameters() if t.is_floating_point()), None)
        if own is None:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            own = out.get(parent, torch.float32) if name else torch.float32
        out[name] = own
    return out


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- heads ------------------------------------------------------------------------------------------


def _is_attention(m) -> bool:
    children = dict(m.named_children())
    return any(n in children for n in _Q_NAMES) or any(w in type(m).__name__.lower() for w in ("attention", "attn"))


def _head_attributes(m, attrs: dict, dtype) -> None:
    if not _is_attention(m):
        return
    for key, names in _HEAD_ATTRS.items():
        for n in names:
            v = getattr(m, n, None)
            if isinstance(v, int) and not isinstance(v, bool):
                attrs[key] = {"value": v, "how": f"attribute {n}"}
                break
    probed = _probe_heads(m, dtype)
    if probed is not None:
        heads, size, kv_heads, how = probed
        attrs["heads"] = {"value": heads, "how": how}
        attrs["head size"] = {"value": size, "how": how}
        attrs["kv heads"] = {"value": kv_heads, "how": how}


class _Stop(Exception):
    pass


def _probe_heads(m, dtype):
    """(heads, head size, kv heads, how) of a cross-attention module, read off the q and k tensors that
    reach scaled_dot_product_attention / flex_attention on a probe input; None when the module is not a
    cross-attention module (x, context) or the probe cannot reach the kernel standalone."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    try:
        params = list(inspect.signature(m.forward).parameters)
    except (TypeError, ValueError):
        return None
    if len(params) < 2 or params[1] not in ("context", "ctx", "encoder_hidden_states", "cond"):
        return None
    linears = {n: c for n, c in m.named_children() if isinstance(c, torch.nn.Linear) or hasattr(c, "input_size")}
    q = next((linears[n] for n in _Q_NAMES if n in linears), None)
    k = next((c for n, c in linears.items() if n in ("k_proj", "kv", "to_k", "key", "wk")), None)
    if q is None or k is None:
        return None
    d_in = getattr(q, "in_features", None) or getattr(q, "input_size", None)
    d_ctx = getattr(k, "in_features", None) or getattr(k, "input_size", None)
    if not d_in or not d_ctx:
        return None
    seen: list = []

    def record(*args, **kwargs):
        qk = [a for a in args[:2] if torch.is_tensor(a)] or [kwargs.get(n) for n in ("query", "key")]
        seen.append(tuple(tuple(t.shape) for t in qk if t is not None))
        raise _Stop

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                record(*args, **(kwargs or {}))
            return func(*args, **(kwargs or {}))

    module_globals = sys.modules[type(m).__module__].__dict__
    swapped = {n: module_globals[n] for n in ("flex_attention", "_flex_attention") if module_globals.get(n) is not None}
    device = next(m.parameters()).device
    if device.type == "meta":
        return None
    gen = torch.Generator().manual_seed(0)  # never the global RNG: a native-noise run draws from it next
    x = torch.randn(1, 5, d_in, generator=gen).to(device=device, dtype=dtype)
    ctx = torch.randn(1, 3, d_ctx, generator=gen).to(device=device, dtype=dtype)
    try:
        module_globals.update({n: record for n in swapped})
        with Mode():
            m(x, ctx)
    except _Stop:
        pass
    except Exception:
        return None
    finally:
        module_globals.update(swapped)
    if not seen or len(seen[0]) < 2 or len(seen[0][0]) != 4:
        return None
    (_, heads, _, size), (_, kv_heads, _, _) = seen[0][0], seen[0][1]
    return heads, size, kv_heads, "probed: q/k at the attention kernel, (batch, heads, tokens, head size)"


# ---- norm eps -----------------------------------------------------------------------------------


class _ProbeCache(dict):
    pass


PROBED = "probed with its defaults on a +-a input in {dtype}"
PROBED_MODULE = "the module probed on a +-a input in {dtype}"


def _is_norm_module(m) -> bool:
    name = type(m).__name__.lower()
    return "norm" in name and "ada" not in name and not any(True for _ in m.children())


def _norm_attributes(m, attrs: dict, dtype, probes: _ProbeCache) -> None:
    found: dict[str, tuple[float | None, str]] = {}
    if _is_norm_module(m):
        width = _norm_width(m)
        if width:
            eps = _measure_eps(lambda x: m(x), width, dtype, probes, ("module", id(m), _dtype_name(dtype)))
            found[type(m).__name__] = (eps, PROBED_MODULE)
    for call, (eps, how) in _norm_calls(m, dtype, probes).items():
        found[call] = (eps, how)
    if found:
        values = sorted({_round_eps(e) for e, _ in found.values() if e is not None})
        by_how: dict[str, list[str]] = {}
        for call, (_, how) in sorted(found.items()):
            by_how.setdefault(how, []).append(call)
        attrs["norm eps"] = {
            "value": values,
            "by_call": {k: e for k, (e, _) in found.items()},
            "how": "; ".join(f"{', '.join(calls)}: {how.format(dtype=_dtype_name(dtype))}" for how, calls in by_how.items()),
        }


def _norm_width(m) -> int | None:
    w = getattr(m, "weight", None)
    if w is not None and getattr(w, "ndim", 0) == 1:
        return int(w.shape[0])
    shape = getattr(m, "normalized_shape", None)
    if shape:
        return int(tuple(shape)[-1])
    return None


def _round_eps(e: float) -> float:
    return float(f"{e:.2g}") if e > 0 else 0.0


def _norm_calls(m, dtype, probes) -> dict[str, tuple[float | None, str]]:
    """Every call in `type(m).forward` to a function whose name contains `norm` (not a submodule):
    the eps its call site passes (a literal or `self.<attr>`), else the eps its defaults give, probed."""
    fn = getattr(type(m), "forward", None)
    if fn is None or getattr(fn, "__module__", "").startswith("torch."):
        return {}
    scope = getattr(fn, "__globals__", {})
    out: dict[str, tuple[float | None, str]] = {}
    for dotted, node in _norm_call_nodes(fn):
        target = _resolve(dotted, scope)  # looked up now: a function patched at run time is the one probed
        if target is None or not callable(target):
            continue
        explicit = _explicit_eps(node, target, m)
        if explicit is not None:
            eps, how = explicit
        else:
            eps = _probe_function(target, m, dtype, probes)
            how = PROBED if eps is not None else "not measurable standalone"
        out.setdefault(dotted, (eps, how))
    return out


@functools.lru_cache(maxsize=None)
def _norm_call_nodes(fn) -> tuple[tuple[str, ast.Call], ...]:
    """(callee name, call node) of every call in `fn`'s source to a `*norm*` function (not `self.*`)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return ()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            dotted = _dotted(node.func)
            if dotted and "norm" in dotted.split(".")[-1].lower() and not dotted.startswith("self."):
                out.append((dotted, node))
    return tuple(out)


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _resolve(dotted: str, scope: dict):
    head, *rest = dotted.split(".")
    obj = scope.get(head)
    if obj is None:
        import builtins

        obj = getattr(builtins, head, None)
    for part in rest:
        obj = getattr(obj, part, None)
    return obj


def _explicit_eps(node: ast.Call, target, m) -> tuple[float, str] | None:
    expr = next((kw.value for kw in node.keywords if kw.arg in ("eps", "epsilon")), None)
    if expr is None:
        try:
            names = list(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            names = []
        idx = next((i for i, n in enumerate(names) if n in ("eps", "epsilon")), None)
        if idx is not None and idx < len(node.args):
            expr = node.args[idx]
    if expr is None:
        return None
    if isinstance(expr, ast.Constant) and isinstance(expr.value, (int, float)):
        return float(expr.value), f"eps={expr.value} written at the call in {type(m).__name__}.forward"
    dotted = _dotted(expr)
    if dotted and dotted.startswith("self.") and dotted.count(".") == 1:
        v = getattr(m, dotted[5:], None)
        if isinstance(v, (int, float)):
            return float(v), f"{dotted} (= {v}) passed at the call in {type(m).__name__}.forward"
    if isinstance(expr, ast.Constant) and expr.value is None:
        return None
    return None


def _probe_function(target, m, dtype, probes) -> float | None:
    """Effective eps of a norm function called with its defaults: x, and zeros for scale/shift/bias
    arguments, a normalized_shape where it asks for one."""
    import torch

    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        sig = None
    width = 16

    def call(x):
        if sig is None:
            return target(x)
        args = [x]
        for i, p in enumerate(list(sig.parameters.values())[1:]):
            if p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY):
                break
            if "shape" in p.name:
                args.append((x.shape[-1],))
            elif p.name in ("scale", "shift", "bias", "gate", "weight", "b", "a"):
                args.append(torch.zeros(1, 1, x.shape[-1], dtype=x.dtype, device=x.device))
            else:
                raise TypeError(f"cannot build argument {p.name!r}")
        return target(*args)

    key = ("fn", id(target), _dtype_name(dtype))
    return _measure_eps(call, width, dtype, probes, key, device=_device_of(m))


def _device_of(m):
    import torch

    t = next(iter(list(m.parameters()) + list(m.buffers())), None)
    if t is None or t.is_meta:
        return torch.device("cpu")
    return t.device


def _measure_eps(fn, width: int, dtype, probes: _ProbeCache, key, device=None) -> float | None:
    """eps of y = x / sqrt(mean(x^2) + eps), up to an affine map, from inputs x = +-a: with
    r(a) = |y(a) - y(0)| / |y(A) - y(0)| for large A, eps = a^2 (1/r^2 - 1); the a giving r^2 nearest
    1/2 is used. None when the function is not scale-normalising or cannot run standalone."""
    import torch

    if key in probes:
        return probes[key]
    result = None
    try:
        sign = torch.tensor([1.0, -1.0] * (width // 2), dtype=torch.float64)

        def out(a: float):
            x = (sign * a).reshape(1, 1, width).expand(1, 4, width).to(dtype=dtype, device=device)
            y = fn(x)
            return y.detach().to(torch.float64).cpu()

        base = out(0.0)
        big = out(100.0) - base
        bigger = out(1000.0) - base
        normalising = bool(torch.isfinite(big).all() and big.abs().mean() > 0
                           and abs((bigger.abs().mean() / big.abs().mean()).item() - 1) < 1e-2)
        if normalising:
            best = None
            for exp in range(-14, 4):
                a2 = 10.0 ** exp
                r = ((out(math.sqrt(a2)) - base).abs().mean() / big.abs().mean()).item()
                if not math.isfinite(r) or r <= 0:
                    continue
                r2 = min(r * r, 1.0)
                if best is None or abs(r2 - 0.5) < abs(best[1] - 0.5):
                    best = (a2, r2)
            if best is not None and 0.02 < best[1] < 0.98:
                result = best[0] * (1.0 / best[1] - 1.0)
            elif best is not None and best[1] >= 0.98:
                result = 0.0  # below what the smallest probe input resolves (< 1e-16)
    except Exception:
        result = None
    probes[key] = result
    return result


# ---- RoPE ----------------------------------------------------------------------------------------


def _rope_attributes(root, modules: dict) -> None:
    """Attribute `RoPE table` on each rotary module: cos and sin it applies at fixed probe positions."""
    config = getattr(root, "config", None)
    height = _cfg(config, "height")
    width = _cfg(config, "width")
    frames = _cfg(config, "n_frames") or 64
    for name, m in root.named_modules():
        cls = type(m).__name__.lower()
        if "rope" not in cls and "rotary" not in cls:
            continue
        parent = modules.get(name.rsplit(".", 1)[0] if "." in name else "", {})
        size = (parent.get("attributes", {}).get("head size") or {}).get("value") or _cfg(m, "head_dim")
        h = height or _cfg(m, "height")
        w = width or _cfg(m, "width")
        if not (size and h and w):
            continue
        table = _probe_rope(m, int(size), int(h), int(w), int(frames))
        if table is not None:
            positions, values = table
            modules[name]["attributes"]["RoPE table"] = {
                "value": values, "positions": positions,
                "how": f"probed: forward on a (1, 0) pair basis at {len(positions)} (t, y, x) positions, head size {size}; "
                       "each row is cos then sin of every pair"}


def _cfg(obj, key):
    if obj is None:
        return None
    v = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    if v is None and hasattr(obj, "arch_config"):
        v = getattr(obj.arch_config, key, None)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _probe_rope(m, size: int, height: int, width: int, frames: int):
    import torch

    ts = sorted({t for t in (0, 1, 2, 3, 7, 31, 100) if t < frames})  # where runs go, not the table's far end
    pos = [(t, 0, 0) for t in ts] + [(0, y, 0) for y in range(1, height)] + [(0, 0, x) for x in range(1, width)]
    device = _device_of(m)
    t = torch.tensor([[p[0] for p in pos]], dtype=torch.long, device=device)
    y = torch.tensor([[p[1] for p in pos]], dtype=torch.long, device=device)
    x = torch.tensor([[p[2] for p in pos]], dtype=torch.long, device=device)
    basis = torch.zeros(size, dtype=torch.float32, device=device)
    basis[0::2] = 1.0
    n = len(pos)
    for shape in ((1, 1, n, size), (1, n, 1, size)):
        try:
            out = m(basis.expand(*shape).contiguous(), {"t_pos": t, "y_pos": y, "x_pos": x})
        except Exception:
            continue
        if tuple(out.shape) != shape:
            continue
        rows = out.reshape(n, size).to(torch.float64).cpu()
        return [list(p) for p in pos], [[float(v) for v in row] for row in rows]
    return None


# ---- KV cache ------------------------------------------------------------------------------------


def _describe_cache(cache, transformer) -> dict[str, Any] | None:
    how = "the runner's KV cache object"
    if cache is None and transformer is not None:
        cache, how = _build_cache_on_meta(transformer)
    if cache is None:
        return {"layers": None, "how": how if transformer is not None else "no transformer"}
    layers = []
    spec = getattr(cache, "_spec", None)
    if isinstance(spec, list):
        layers = [{"frames kept": int(s), "dilation": int(d)} for s, d in spec]
        how += " (_spec: slots, dilation)"
    else:
        for layer in getattr(cache, "layers", None) or []:
            kept = getattr(layer, "num_buckets", None)
            dil = getattr(layer, "pinned_dilation", None)
            if kept is None:
                return {"layers": None, "how": how + f": {type(layer).__name__} has no num_buckets"}
            layers.append({"frames kept": int(kept), "dilation": int(dil or 1)})
        how += " (per layer num_buckets, pinned_dilation)"
    return {"class": f"{type(cache).__module__}.{type(cache).__qualname__}", "layers": layers or None, "how": how}


def _build_cache_on_meta(transformer):
    import torch

    module = sys.modules.get(type(transformer).__module__)
    config = getattr(transformer, "config", None)
    classes = [v for k, v in vars(module).items() if isinstance(v, type) and k.endswith("KVCache") and "Layer" not in k] if module else []
    for cls in classes:
        try:
            params = list(inspect.signature(cls).parameters)
        except (TypeError, ValueError):
            continue
        if params[:3] != ["config", "batch_size", "dtype"]:
            continue
        try:
            with torch.device("meta"):
                return cls(config, batch_size=1, dtype=torch.bfloat16), f"{cls.__name__}(model.config) built on the meta device"
        except Exception as exc:
            return None, f"{cls.__name__}(model.config) failed ({type(exc).__name__}: {exc})"
    return None, "no KV-cache class beside the model (the pipeline builds its cache at run time)"


# ---- diff ------------------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str
    """`differs`, `designed` or `info`."""
    component: str
    where: str
    what: str
    a: str
    b: str
    how: str = ""

    @property
    def label(self) -> str:
        """Where, as printed: transformer names as they are, other components prefixed."""
        if self.component == "transformer" and self.where:
            return self.where
        return f"{self.component} {self.where}".strip()

    def line(self) -> str:
        return f"{self.label}: {self.what} {self.a} vs {self.b}"


@dataclass
class StructureDiff:
    available: bool
    note: str = ""
    findings: list[Finding] = field(default_factory=list)
    matched: dict[str, str] = field(default_factory=dict)
    """Per component, what was matched: `412 parameters, 120 modules (2 by rename)`."""

    @property
    def differences(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == DIFFERS]

    def grouped(self) -> list[tuple[Finding, int]]:
        """Findings with layer numbers folded (`blocks.N`), each with how many it stands for: the
        same difference in every block reads as one row. Differing first, then designed, then notes."""
        groups: dict[tuple, list[Finding]] = {}
        for f in self.findings:
            where = re.sub(r"\.\d+(?=\.|$)", ".N", f.where)
            where = re.sub(r"^layer \d+$", "layer N", where)
            groups.setdefault((f.kind, f.component, where, f.what, f.a, f.b), []).append(f)
        order = {DIFFERS: 0, DESIGNED: 1, INFO: 2}
        out = []
        for (kind, comp, where, what, a, b), members in groups.items():
            first = members[0]
            label = first.where if len(members) == 1 else f"{where} (x{len(members)})"
            out.append((Finding(kind, comp, label, what, a, b, first.how), len(members)))
        return sorted(out, key=lambda fc: order.get(fc[0].kind, 3))

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "note": self.note, "matched": self.matched,
                "differences": len(self.differences),
                "findings": [asdict(f) for f in self.findings]}


def diff_captures(a, b) -> StructureDiff:
    """The structural diff of two captures (`parity.capture.Capture`); unavailable, with the reason,
    when either was made without a structure description."""
    da, db = read(a.run_dir), read(b.run_dir)
    missing = [cap.name for cap, d in ((a, da), (b, db)) if d is None]
    if missing:
        return StructureDiff(False, f"no {STRUCTURE_FILE} in {' and '.join(missing)} (capture made without a structure "
                                    "description); structure not compared")
    return diff(da, db)


def diff(a: dict[str, Any], b: dict[str, Any]) -> StructureDiff:
    result = StructureDiff(True)
    renames = _rename_table(a, b)
    for comp in list(a["components"]) + [c for c in b["components"] if c not in a["components"]]:
        ca, cb = a["components"].get(comp), b["components"].get(comp)
        if ca is None or cb is None:
            result.findings.append(Finding(INFO, comp, "", "component", "present" if ca else "not described",
                                           "present" if cb else "not described"))
            continue
        _diff_component(comp, ca, cb, renames, result)
    _diff_cache(a.get("kv_cache"), b.get("kv_cache"), result)
    for side, d in (("A", a), ("B", b)):
        for note in d.get("notes") or []:
            result.findings.append(Finding(INFO, "description", "", f"note of {side}", note if side == "A" else "",
                                           note if side == "B" else ""))
    return result


def _rename_table(a: dict, b: dict) -> list[tuple[str, str]]:
    """(regex, replacement) pairs taking a name from either side's spelling to a shared spelling:
    each side's `param_names_mapping` (checkpoint -> FastVideo), then the fixed MLP spelling."""
    table = []
    for d in (a, b):
        for pat, rep in (d.get("renames") or {}).items():
            table.append((pat, rep))
    for old, new in FALLBACK_RENAMES:
        table.append((re.escape(old), new))
    return table


def _canonical(name: str, table) -> str:
    probe = name + ".__"
    for pat, rep in table:
        try:
            probe = re.sub(pat, rep, probe)
        except re.error:
            continue
    return probe[:-3]


def _index(entries: dict, table) -> tuple[dict[str, str], int]:
    out, renamed = {}, 0
    for name in entries:
        canon = _canonical(name, table)
        renamed += canon != name
        out.setdefault(canon, name)
    return out, renamed


def _diff_component(comp: str, ca: dict, cb: dict, table, result: StructureDiff) -> None:
    mods_a, ren_ma = _index(ca["modules"], table)
    mods_b, ren_mb = _index(cb["modules"], table)
    par_a, ren_pa = _index(ca["parameters"], table)
    par_b, ren_pb = _index(cb["parameters"], table)
    buf_a, _ = _index(ca["buffers"], table)
    buf_b, _ = _index(cb["buffers"], table)
    both_params = [n for n in par_a if n in par_b]
    result.matched[comp] = (f"{len(both_params)} of {len(par_a)}/{len(par_b)} parameters, "
                            f"{len([n for n in mods_a if n in mods_b])} of {len(mods_a)}/{len(mods_b)} modules "
                            f"(renamed: {ren_pa + ren_pb} parameter names, {ren_ma + ren_mb} module names)")
    F = result.findings

    def holds_tensors(entries: dict, mod: str, tensors: dict) -> bool:
        prefix = mod + "." if mod else ""
        return any(n.startswith(prefix) for n in tensors)

    # parameters: presence, shape, dtype, values
    for name in par_a:
        if name not in par_b:
            F.append(Finding(DIFFERS, comp, name, "parameter", "present", "missing",
                             "named_parameters after the rename table"))
    for name in par_b:
        if name not in par_a:
            F.append(Finding(DIFFERS, comp, name, "parameter", "missing", "present",
                             "named_parameters after the rename table"))
    dtype_diffs: list[tuple[str, str, str]] = []
    for name in both_params:
        ea, eb = ca["parameters"][par_a[name]], cb["parameters"][par_b[name]]
        if ea["shape"] != eb["shape"]:
            F.append(Finding(DIFFERS, comp, name, "shape", str(ea["shape"]), str(eb["shape"]), "named_parameters"))
            continue
        if ea["dtype"] != eb["dtype"]:
            dtype_diffs.append((name, ea["dtype"], eb["dtype"]))
        if not _same_checksum(ea.get("checksum"), eb.get("checksum")):
            F.append(Finding(DIFFERS, comp, name, "loaded values", _fmt_checksum(ea.get("checksum")),
                             _fmt_checksum(eb.get("checksum")),
                             "checksum of the values rounded to bf16 (position-weighted sum, sum |v|)"))
        tied_a = ("tied_to" in ea) and _canonical(ea["tied_to"], table)
        tied_b = ("tied_to" in eb) and _canonical(eb["tied_to"], table)
        if tied_a != tied_b:
            F.append(Finding(INFO, comp, name, "tied to", tied_a or "own tensor", tied_b or "own tensor",
                             "named_parameters(remove_duplicate=False)"))
    _dtype_findings(comp, dtype_diffs, len(both_params), F)

    # buffers: on both sides compare shape, dtype and values; one side only is noted
    for name in buf_a:
        if name not in buf_b:
            F.append(Finding(INFO, comp, name, "buffer", _buf(ca["buffers"][buf_a[name]]), "absent",
                             "named_buffers (B computes it in forward, or does without)"))
    for name in buf_b:
        if name not in buf_a:
            F.append(Finding(INFO, comp, name, "buffer", "absent", _buf(cb["buffers"][buf_b[name]]),
                             "named_buffers (A computes it in forward, or does without)"))
    for name in buf_a:
        if name not in buf_b:
            continue
        ea, eb = ca["buffers"][buf_a[name]], cb["buffers"][buf_b[name]]
        if ea["shape"] != eb["shape"] or ea["dtype"] != eb["dtype"]:
            F.append(Finding(DIFFERS, comp, name, "buffer", _buf(ea), _buf(eb), "named_buffers"))
        elif not _same_checksum(ea.get("checksum"), eb.get("checksum")):
            F.append(Finding(DIFFERS, comp, name, "buffer values", _fmt_checksum(ea.get("checksum")),
                             _fmt_checksum(eb.get("checksum")), "checksum of the values rounded to bf16"))

    # modules: one side only; attributes on both
    # (a module holding parameters on one side only shows as its missing parameters above)
    for name in mods_a:
        if name not in mods_b:
            if not holds_tensors(ca, mods_a[name], ca["parameters"]):
                F.append(Finding(INFO, comp, name, "module", _short_class(ca["modules"][mods_a[name]]["class"]), "absent",
                                 "named_modules (parameter-free)"))
    for name in mods_b:
        if name not in mods_a:
            if not holds_tensors(cb, mods_b[name], cb["parameters"]):
                F.append(Finding(INFO, comp, name, "module", "absent", _short_class(cb["modules"][mods_b[name]]["class"]),
                                 "named_modules (parameter-free)"))
    for name in mods_a:
        if name not in mods_b:
            continue
        aa = ca["modules"][mods_a[name]]["attributes"]
        ab = cb["modules"][mods_b[name]]["attributes"]
        for key in list(aa) + [k for k in ab if k not in aa]:
            va, vb = aa.get(key), ab.get(key)
            if va is None or vb is None:
                if key != "RoPE table":
                    F.append(Finding(INFO, comp, name or "(root)", key, _attr_text(va), _attr_text(vb),
                                     _how(va, vb)))
                continue
            kind, detail = _attribute_finding(key, va, vb)
            if kind is not None:
                F.append(Finding(kind, comp, name or "(root)", key, *detail, _how(va, vb)))


def _dtype_findings(comp: str, diffs: list[tuple[str, str, str]], total: int, F: list) -> None:
    """A whole component in another dtype is the sides' precision policy (designed, shown in the config
    diff too); a part of it in another dtype is a dtype-policy difference of those submodules."""
    if not diffs:
        return
    pairs = {(da, db) for _, da, db in diffs}
    if len(diffs) == total and len(pairs) == 1:
        da, db = next(iter(pairs))
        F.append(Finding(DESIGNED, comp, "(all parameters)", "dtype", da, db,
                         "every parameter of the component: the precision policy of each side (see the config diff)"))
        return
    groups: dict[tuple[str, str, str], list[str]] = {}
    for name, da, db in diffs:
        groups.setdefault((_owner(name, [n for n, _, _ in diffs]), da, db), []).append(name)
    for (owner, da, db), names in groups.items():
        F.append(Finding(DIFFERS, comp, owner, "dtype", da, db,
                         f"{len(names)} parameter(s) after each pipeline's dtype setup; the rest of the component agrees"))


def _owner(name: str, names: list[str]) -> str:
    """The shortest module prefix of `name` all of whose listed parameters differ alike (grouping)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i]) + "."
        if all(n.startswith(prefix) for n in names if n.startswith(prefix)) and sum(n.startswith(prefix) for n in names) > 1:
            return prefix[:-1]
    return name


def _attribute_finding(key: str, va: dict, vb: dict) -> tuple[str | None, tuple[str, str]]:
    """(kind of the finding, or None when the two agree; (A text, B text))."""
    a, b = va.get("value"), vb.get("value")
    if key == "norm eps":
        la, lb = list(a or []), list(b or [])
        same = len(la) == len(lb) and all(_eps_close(x, y) for x, y in zip(la, lb))
        return (None if same else DIFFERS), (_eps_text(va), _eps_text(vb))
    if key == "RoPE table":
        if len(a) != len(b) or (a and len(a[0]) != len(b[0])):
            return DIFFERS, (f"{len(a)}x{len(a[0]) if a else 0}", f"{len(b)}x{len(b[0]) if b else 0}")
        worst, at = 0.0, None
        for i, (ra, rb) in enumerate(zip(a, b)):
            for j, (x, y) in enumerate(zip(ra, rb)):
                d = abs(x - y)
                if d > worst:
                    worst, at = d, (i, j)
        if worst <= _ROPE_TOL:
            return None, ("", "")
        rounded = _rounded_side(a, b)
        if rounded:
            texts = ("values rounded to bfloat16 (stored as float32)", f"unrounded (max |cos/sin A - B| {worst:.3g})")
            return DESIGNED, texts if rounded == "A" else texts[::-1]
        pos = va.get("positions", [])
        i, j = at
        half = len(a[0]) // 2
        where = f"at (t, y, x) = {tuple(pos[i]) if i < len(pos) else i}, {'cos' if j < half else 'sin'} of pair {j % half}"
        return DIFFERS, (f"max |cos/sin A - B| {worst:.3g} {where}", f"{a[i][j]:.6g} vs {b[i][j]:.6g}")
    return (None if a == b else DIFFERS), (str(a), str(b))


def _rounded_side(a: list, b: list) -> str | None:
    """'A' or 'B' when that side's table is the other's rounded to bfloat16 (world_engine's
    NoCastModule casts its fp32 tables through the model dtype and back), else None."""
    import torch

    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    for side, mine, other in (("A", ta, tb), ("B", tb, ta)):
        representable = bool(((mine.to(torch.bfloat16).to(torch.float64) - mine).abs() <= 1e-7).all())
        within_rounding = ((mine - other).abs() <= other.abs() * 2.0 ** -8 + 1e-6).all()
        if representable and within_rounding:
            return side
    return None


def _eps_close(x: float, y: float) -> bool:
    if x == y:
        return True
    if x <= 0 or y <= 0:
        return max(x, y) < 1e-12
    return abs(math.log(x / y)) < _EPS_REL


def _eps_text(v: dict | None) -> str:
    if v is None:
        return "—"
    by_call = v.get("by_call") or {}
    if by_call:
        return ", ".join(f"{k} {('%.3g' % e) if e is not None else '?'}" for k, e in sorted(by_call.items()))
    return ", ".join(f"{e:.3g}" for e in v.get("value") or [])


def _attr_text(v: dict | None) -> str:
    if v is None:
        return "—"
    if "by_call" in v:
        return _eps_text(v)
    return str(v.get("value"))


def _how(va: dict | None, vb: dict | None) -> str:
    ha, hb = (va or {}).get("how", ""), (vb or {}).get("how", "")
    if ha == hb or not hb:
        return ha
    if not ha:
        return hb
    return f"A: {ha} | B: {hb}"


def _diff_cache(a: dict | None, b: dict | None, result: StructureDiff) -> None:
    la = (a or {}).get("layers")
    lb = (b or {}).get("layers")
    if la is None or lb is None:
        if la != lb:
            result.findings.append(Finding(INFO, "kv_cache", "", "layers", _cache_text(a), _cache_text(b),
                                           _how(a, b)))
        return
    if len(la) != len(lb):
        result.findings.append(Finding(DIFFERS, "kv_cache", "", "layers", str(len(la)), str(len(lb)), _how(a, b)))
    for i, (x, y) in enumerate(zip(la, lb)):
        for key in ("frames kept", "dilation"):
            if x.get(key) != y.get(key):
                result.findings.append(Finding(DIFFERS, "kv_cache", f"layer {i}", key, str(x.get(key)), str(y.get(key)),
                                               _how(a, b)))


def _cache_text(d: dict | None) -> str:
    if not d or d.get("layers") is None:
        return "not described" + (f" ({d['how']})" if d and d.get("how") else "")
    return "; ".join(f"{x['frames kept']}f/d{x['dilation']}" for x in d["layers"])


def _buf(e: dict) -> str:
    return f"{e['dtype']} {e['shape']}"


def _short_class(cls: str) -> str:
    return cls.rsplit(".", 1)[-1]


def _same_checksum(x, y) -> bool:
    if x is None or y is None:
        return True  # integer and meta tensors carry no checksum: not compared
    (wa, sa), (wb, sb) = x, y
    if any(isinstance(v, float) and math.isnan(v) for v in (wa, sa, wb, sb)):
        return all(isinstance(v, float) and math.isnan(v) for v in (wa, wb)) or (wa == wb and sa == sb)
    scale = max(abs(sa), abs(sb), 1e-30)
    return abs(wa - wb) <= 1e-9 * scale and abs(sa - sb) <= 1e-9 * scale


def _fmt_checksum(c) -> str:
    return "—" if c is None else f"sum·w {c[0]:.9g}, sum|v| {c[1]:.9g}"
