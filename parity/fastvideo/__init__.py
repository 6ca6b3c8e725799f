"""FastVideo side: finds a FastVideo installation or source tree and drives its Waypoint pipeline.

FastVideo is not on PyPI with the Waypoint port (PR #1058), so it is found either as an installed
`fastvideo` package or as a source tree named by FASTVIDEO_SRC (put on sys.path for the run).
Nothing of FastVideo is vendored here; it is imported at run time.

Modules: `source` (where FastVideo comes from), `generation` (which pipeline it has), `options`,
`build` (its modules, built from a bundle), `prompt` (shared or its own text stage), `hooks` (what
the harness installs and records during a run), `writing` (the capture), `calls` (single transformer
calls, for drill-down), `runner` (`FastVideoRunner`, which drives all of them).

    ok, where = fastvideo_status()     # (True, where) when FastVideo imports and the adapter is usable
    FastVideoRunner(bundle=..., snapshot=...).run(request)    # see parity.fastvideo.runner
"""

from __future__ import annotations

from parity.errors import UserError
from parity.fastvideo.build import bundle_status, sibling_bundle
from parity.fastvideo.source import SRC_ENV, fastvideo_revision, fastvideo_src_status, import_fastvideo

__all__ = ["SRC_ENV", "bundle_status", "fastvideo_revision", "fastvideo_src_status", "fastvideo_status", "import_fastvideo",
           "sibling_bundle"]


def fastvideo_status() -> tuple[bool, str]:
    """(usable, where or why not). Imports FastVideo, so a tree that is found but broken is reported here
    rather than halfway through `make parity`."""
    ok, where = fastvideo_src_status()
    if not ok:
        return False, where
    try:
        from parity.fastvideo.generation import detect_generation
        from parity.fastvideo.runner import FastVideoRunner  # noqa: F401
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
