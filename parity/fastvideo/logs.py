"""FastVideo's own log records, kept out of the harness's console unless asked for.

FastVideo configures logging when it is imported: a stdout handler on its `fastvideo` logger and on
the root logger, and on every machine without an Ascend NPU an `ERROR ... NPU detection failed` line.
Unless verbose output is asked for (`waypoint-parity --verbose`, or WAYPOINT_PARITY_VERBOSE=1), the
harness imports FastVideo with FASTVIDEO_CONFIGURE_LOGGING=0 (when the user has not set it) and
collects the `fastvideo` loggers' records in memory; `write_to(run_dir)` puts them, and every later
record of that run, into `run_dir/fastvideo.log`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

VERBOSE_ENV = "WAYPOINT_PARITY_VERBOSE"
LOG_FILE = "fastvideo.log"
_KEPT = 10_000
"""Records held in memory before a run folder exists (FastVideo logs a few dozen at import)."""


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _Collector(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s %(filename)s:%(lineno)d] %(message)s"))
        self.lines: list[str] = []
        self.path: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad format argument in FastVideo's own call must not stop the run
            line = f"{record.levelname} {record.name}: {record.msg!r}"
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
                return
            except OSError:
                self.path = None
        self.lines = (self.lines + [line])[-_KEPT:]


_COLLECTOR = _Collector()


def quiet() -> None:
    """Route FastVideo's logging to the collector (call before FastVideo is imported; idempotent)."""
    if verbose():
        return
    os.environ.setdefault("FASTVIDEO_CONFIGURE_LOGGING", "0")
    logger = logging.getLogger("fastvideo")
    if _COLLECTOR not in logger.handlers:
        logger.addHandler(_COLLECTOR)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def write_to(run_dir: str | Path) -> Path | None:
    """Send what FastVideo logged so far, and what it logs from now on, to `run_dir/fastvideo.log`."""
    if verbose():
        return None
    path = Path(run_dir) / LOG_FILE
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in _COLLECTOR.lines)
    _COLLECTOR.lines = []
    _COLLECTOR.path = path
    return path
