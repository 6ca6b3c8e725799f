"""How the single-table benchmarks print their result: one `name  value` row each, and the same
rows as JSON when asked (`--json`)."""

from __future__ import annotations

import json
from pathlib import Path


def print_rows(rows: dict, json_path: Path | None = None) -> None:
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if json_path:
        json_path.write_text(json.dumps(rows, indent=1))
