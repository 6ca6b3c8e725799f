"""FastVideo side: finds a FastVideo installation or source tree and drives its Waypoint pipeline.

FastVideo is not on PyPI with the Waypoint port (PR #1058), so it is found either as an installed
`fastvideo` package or as a source tree named by FASTVIDEO_SRC (put on sys.path for the run).
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
    root = Path(src).expanduser()
    if not (root / "fastvideo" / "__init__.py").is_file():
        raise UserError(f"{SRC_ENV} does not point at a FastVideo source tree (no fastvideo/__init__.py)", root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return str(root)


def fastvideo_status() -> tuple[bool, str]:
    """(usable, reason). Cheap: finds the package without importing its heavy modules."""
    try:
        src = _add_source_tree()
    except UserError as exc:
        return False, exc.one_line()
    if importlib.util.find_spec("fastvideo") is None:
        return False, f"FastVideo is not importable (install it, or set {SRC_ENV} to a checkout of PR #1058)"
    try:
        from parity.fastvideo.runner import FastVideoRunner  # noqa: F401
    except ImportError:
        where = src or "the installed package"
        return False, f"FastVideo found at {where}, but this harness has no FastVideo adapter yet"
    return True, src or "installed fastvideo"


def __getattr__(name: str):
    if name == "FastVideoRunner":
        try:
            from parity.fastvideo.runner import FastVideoRunner
        except ImportError:
            raise UserError("the FastVideo side is not available: " + fastvideo_status()[1]) from None
        return FastVideoRunner
    raise AttributeError(name)
