"""Import fixes that old FastVideo commits need, applied at run time inside the process that tests the
commit, never by editing the checkout.

Some commits of PR #1058 do not import as committed on their own tree (docs/fastvideo.md). Each
fix below is applied only when the module it names is imported and only when the module needs it
(the fix checks for the defect first), and every fix that fired is recorded in the bisect row.

| fix | module | what | why it is neutral |
|---|---|---|---|
| `register_configs workload_types` | `fastvideo.registry` | calls of `register_configs(...)` that lack the required `workload_types` argument get `workload_types=()` | `()` is what the later commit 364cf9136 passes for Waypoint: "not exposed as a UI workload" |
| `CachableDiT alias` | `fastvideo.models.dits.base` | when the module has `BaseDiT` but no `CachableDiT`, a lookup of `CachableDiT` (only that) answers `BaseDiT` | the Waypoint model only subclasses it; the cache methods it had are unused by Waypoint |

    install()          # before anything imports fastvideo; returns the Fixer (its .applied lists what fired)

A fix rewrites the module's syntax tree before it runs (a meta-path finder hands out a loader that
compiles the fixed tree, never writing bytecode), or patches the module right after it ran.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable


@dataclass(frozen=True)
class ImportFix:
    name: str
    module: str
    why: str
    rewrite: Callable[[ast.Module], bool] | None = None
    """Edits the module's tree before it runs; True when it changed something."""
    patch: Callable[[ModuleType, Callable[[], None]], None] | None = None
    """Patches the module after it ran; calls its second argument when the patch is actually used."""


def _required_position(fn: ast.FunctionDef, name: str) -> int | None:
    """Index of `name` among the positional parameters of `fn` when it has no default (-1 when it is
    a keyword-only parameter without default); None when it is optional or absent."""
    a = fn.args
    positional = a.posonlyargs + a.args
    first_default = len(positional) - len(a.defaults)
    for i, arg in enumerate(positional):
        if arg.arg == name:
            return i if i < first_default else None
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        if arg.arg == name:
            return -1 if default is None else None
    return None


def _add_workload_types(tree: ast.Module) -> bool:
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "register_configs"]
    position = _required_position(defs[0], "workload_types") if defs else None
    if position is None:
        return False
    changed = False
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "register_configs"
                and (position < 0 or len(node.args) <= position) and all(k.arg != "workload_types" for k in node.keywords)):
            node.keywords.append(ast.keyword("workload_types", ast.Tuple([], ast.Load())))
            changed = True
    ast.fix_missing_locations(tree)
    return changed


def _alias_cachable_dit(module: ModuleType, fired: Callable[[], None]) -> None:
    if hasattr(module, "CachableDiT") or not hasattr(module, "BaseDiT"):
        return
    previous = getattr(module, "__getattr__", None)

    def __getattr__(name):  # PEP 562: reached only for names the module lacks
        if name == "CachableDiT":
            fired()
            return module.BaseDiT
        if previous is not None:
            return previous(name)
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    module.__getattr__ = __getattr__


FIXES: tuple[ImportFix, ...] = (
    ImportFix("register_configs workload_types", "fastvideo.registry",
              "the Waypoint register_configs(...) call predates the required workload_types argument",
              rewrite=_add_workload_types),
    ImportFix("CachableDiT alias", "fastvideo.models.dits.base",
              "waypoint_transformer.py imports CachableDiT, which base.py no longer has; aliased to BaseDiT",
              patch=_alias_cachable_dit),
)


@dataclass
class Fixer(importlib.abc.MetaPathFinder):
    fixes: tuple[ImportFix, ...] = FIXES
    applied: list[str] = field(default_factory=list)

    def find_spec(self, fullname, path, target=None):
        fixes = [f for f in self.fixes if f.module == fullname]
        if not fixes:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _FixingLoader(fullname, spec.origin, fixes, self.applied)
        return spec


class _FixingLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname, path, fixes, applied):
        super().__init__(fullname, path)
        self.fixes, self.applied = fixes, applied

    def get_code(self, fullname):
        # always from source: cached bytecode would skip the rewrite, and the rewritten code is never cached
        source = self.get_data(self.path)
        tree = ast.parse(source, self.path)
        for fix in self.fixes:
            if fix.rewrite is not None and fix.rewrite(tree):
                self.applied.append(fix.name)
        return compile(tree, self.path, "exec", dont_inherit=True)

    def exec_module(self, module):
        super().exec_module(module)
        for fix in self.fixes:
            if fix.patch is not None:
                fix.patch(module, lambda name=fix.name: None if name in self.applied else self.applied.append(name))


def install(fixes: tuple[ImportFix, ...] = FIXES) -> Fixer:
    """Put the fixes in front of the import system of this process (idempotent)."""
    for finder in sys.meta_path:
        if isinstance(finder, Fixer):
            return finder
    fixer = Fixer(fixes)
    sys.meta_path.insert(0, fixer)
    return fixer
