"""A keyed write as one delta-rs MERGE: the SQL of its join and clauses, built from a plan.

Column names are quoted (backticks), so any name the table holds works; the only SQL a caller
passes in is a dedup window, which is a predicate on the table's own columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lakesink.errors import ConfigError, InternalError

SOURCE = "s"
TARGET = "t"


@dataclass(frozen=True, slots=True)
class MergePlan:
    """What a keyed write does with each row of its (collapsed) source.

    `columns`: the table columns the source supplies, written on insert and update (others keep
    their value on update and are null on insert). `order_by`: apply a change only where the
    source's value is above the table's (None: dedup, insert unseen keys only). `delete_flag`,
    `keep_flags`: source bool columns (lakesink.config.Upsert). `window`: dedup only within rows of
    the table this predicate holds for.
    """

    key: tuple[str, ...]
    columns: tuple[str, ...]
    order_by: str | None = None
    delete_flag: str | None = None
    keep_flags: tuple[tuple[str, str], ...] = ()
    window: str | None = None
    delete_unmatched_below: int | None = None

    def predicate(self) -> str:
        join = " AND ".join(f"{_t(k)} = {_s(k)}" for k in self.key)
        return f"{join} AND ({self.window})" if self.window else join

    def newer(self) -> str:
        if self.order_by is None:
            raise InternalError("a dedup merge has no order to compare")
        return f"{_s(self.order_by)} > {_t(self.order_by)}"

    def updates(self) -> dict[str, str]:
        keep = dict(self.keep_flags)
        return {
            quote(c): (f"CASE WHEN {_s(keep[c])} THEN {_t(c)} ELSE {_s(c)} END" if c in keep else _s(c)) for c in self.columns
        }

    def inserts(self) -> dict[str, str]:
        # A kept column with no row to keep it from: the change never carried the value (null).
        return {quote(c): _s(c) for c in self.columns}

    def apply(self, builder: Any) -> Any:
        """Add the clauses to a delta-rs `TableMerger` (in order: the first matching clause acts)."""
        if self.order_by is None:
            return builder.when_not_matched_insert(updates=self.inserts())
        live = "TRUE"
        if self.delete_flag is not None:
            builder = builder.when_matched_delete(predicate=f"{_s(self.delete_flag)} AND {self.newer()}")
            live = f"NOT {_s(self.delete_flag)}"
        builder = builder.when_matched_update(updates=self.updates(), predicate=f"{live} AND {self.newer()}")
        builder = builder.when_not_matched_insert(updates=self.inserts(), predicate=live)
        if self.delete_unmatched_below is not None:
            older = f"{_t(self.order_by)} < {int(self.delete_unmatched_below)}"
            builder = builder.when_not_matched_by_source_delete(predicate=older)
        return builder


def quote(name: str) -> str:
    """`name` as a SQL identifier delta-rs reads as written (case and all).

    Raises:
        ConfigError: the name holds a backtick, which cannot be quoted.
    """
    if "`" in name:
        raise ConfigError(f"column {name!r} holds a backtick: keyed writes cannot name it; rename the column")
    return f"`{name}`"


def _s(name: str) -> str:
    return f"{SOURCE}.{quote(name)}"


def _t(name: str) -> str:
    return f"{TARGET}.{quote(name)}"


def metric(metrics: Mapping[str, Any], name: str) -> int:
    """One of delta-rs's merge metrics as an int (0 when absent)."""
    value = metrics.get(name)
    return int(value) if isinstance(value, int) else 0
