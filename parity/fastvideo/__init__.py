"""FastVideo side: finds a FastVideo installation or source tree and drives its Waypoint pipeline.

FastVideo is not on PyPI with the Waypoint port (PR #1058), so it is found either as an installed
`fastvideo` package or as a source tree named by FASTVIDEO_SRC (put on sys.path for the run).
Nothing of FastVideo is vendored here; `parity.fastvideo.runner` imports it at run time.

    ok, where = fastvideo_status()     # (True, where) when FastVideo imports and the adapter is usable
    FastVideoRunner(bundle=..., snapshot=...).run(request)    # see parity.fastvideo.runner
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from parity.errors import UserError

SRC_ENV = "FASTVIDEO_SRC"


def _add_source_tree() -> str | None:
    src = os.environ.get(SRC_ENV)
    if not src:
        return None
    root = Path(src).expanduser().resolve()
    if not (root / "fastvideo" / "__init__.py").is_file():
        raise UserError(f"{SRC_ENV} does not point at a FastVideo source tree (no fastvideo/__init__.py)", root)
    loaded = sys.modules.get("fastvideo")
    if loaded is not None and getattr(loaded, "__file__", None):
        here = Path(loaded.__file__).resolve().parent.parent
        if here != root:
            raise UserError(f"FastVideo from {here} is already imported in this process; {SRC_ENV}={root} "
                            "cannot replace it (run each FastVideo tree in its own process)", root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return str(root)


def fastvideo_src_status() -> tuple[bool, str]:
    """(found, where or why not) without importing FastVideo."""
    try:
        src = _add_source_tree()
    except UserError as exc:
        return False, exc.one_line()
    if "fastvideo" not in sys.modules and importlib.util.find_spec("fastvideo") is None:
        return False, f"FastVideo is not importable (install it, or set {SRC_ENV} to a checkout of PR #1058)"
    return True, src or "installed fastvideo"


def import_fastvideo():
    """Import `fastvideo` (from FASTVIDEO_SRC or installed); UserError naming the cause otherwise."""
    ok, where = fastvideo_src_status()
    if not ok:
        raise UserError(where)
    from parity.fastvideo import logs

    logs.quiet()  # before the import: FastVideo logs (and configures logging) while importing
    try:
        import fastvideo  # noqa: F401
    except Exception as exc:  # a broken tree fails in many ways; the message is what matters
        raise UserError(f"FastVideo at {where} failed to import ({type(exc).__name__}: {exc})") from None
    return sys.modules["fastvideo"]


def fastvideo_status() -> tuple[bool, str]:
    """(usable, where or why not). Imports FastVideo, so a tree that is found but broken is reported here
    rather than halfway through `make parity`."""
    ok, where = fastvideo_src_status()
    if not ok:
        return False, where
    try:
        from parity.fastvideo.runner import FastVideoRunner, detect_generation  # noqa: F401
    except ImportError as exc:
        return False, f"FastVideo found at {where}, but the adapter failed to import ({exc})"
    try:
        import_fastvideo()
        generation = detect_generation()
    except UserError as exc:
        return False, exc.one_line()
    return True, f"{where} ({generation.name} pipeline)"


def __getattr__(name: str):
    if name == "FastVideoRunner":
        try:
            from parity.fastvideo.runner import FastVideoRunner
        except ImportError:
            raise UserError("the FastVideo side is not available: " + fastvideo_status()[1]) from None
        return FastVideoRunner
    raise AttributeError(name)
