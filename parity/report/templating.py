"""What the report pages share: the jinja2 environment, number formatting, page and anchor names."""

from __future__ import annotations

import math
from typing import Any

from parity.compare import FAIL, PASS


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def family_page(family: str) -> str:
    return f"stage-{family}.html"


def stage_anchor(stage_id: str) -> str:
    """`f3/step2.velocity` -> `f3-step2.velocity` (a valid id and file name)."""
    return stage_id.replace("/", "-")


_ENV = None


def environment():
    """The jinja2 environment of every report page (templates in `templates/`), built once."""
    global _ENV
    if _ENV is None:
        from jinja2 import Environment, PackageLoader, StrictUndefined

        _ENV = Environment(loader=PackageLoader("parity.report", "templates"), autoescape=True,
                           undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        _ENV.filters["num"] = fmt_num
        _ENV.globals.update(PASS=PASS, FAIL=FAIL, family_page=family_page, stage_anchor=stage_anchor)
    return _ENV
