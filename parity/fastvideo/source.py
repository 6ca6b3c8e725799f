"""Where FastVideo comes from: an installed `fastvideo`, or the source tree named by FASTVIDEO_SRC.

    ok, where = fastvideo_src_status()     # found? (without importing FastVideo)
    import_fastvideo()                      # the imported package, or a UserError naming the cause
    fastvideo_revision()                    # path, commit, version of what was imported
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from parity.environment import source_commit
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



def fastvideo_revision() -> dict[str, Any]:
    module = sys.modules.get("fastvideo")
    info: dict[str, Any] = {}
    if module is None or not getattr(module, "__file__", None):
        return info
    root = Path(module.__file__).resolve().parent.parent
    info["path"] = str(root)
    commit = source_commit([root], "FASTVIDEO_COMMIT")
    if commit:
        info["commit"] = commit
    try:
        from importlib import metadata

        info["version"] = metadata.version("fastvideo")
    except Exception:
        info["version"] = getattr(module, "__version__", None)
    if "commit" not in info:
        info["commit"] = "unknown (no git metadata; put the commit in FASTVIDEO_COMMIT at the tree root)"
    return info

