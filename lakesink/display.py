"""How lakesink's results look in a notebook: a small HTML table of a value's fields (`_repr_html_`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from html import escape
from typing import Any


def html_table(title: str, rows: Iterable[tuple[str, Any]]) -> str:
    """`rows` (field, value) under `title`, every text escaped; None shows as an empty cell."""
    cells = "".join(
        f"<tr><th style='text-align:left'>{escape(name)}</th><td style='text-align:left'>{escape(_text(value))}</td></tr>"
        for name, value in rows
    )
    return f"<table><caption style='text-align:left'><b>{escape(title)}</b></caption>{cells}</table>"


def dataclass_html(value: Any) -> str:
    """A dataclass instance as `html_table`, titled with its class name."""
    return html_table(type(value).__name__, ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value)))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) if not dataclasses.is_dataclass(v) else repr(v) for v in value)
    return str(value)
