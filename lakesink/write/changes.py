"""A keyed batch made ready for its MERGE: one row per key, checked keys, changes no tombstone outdates.

Everything here is vectorised Arrow except carrying kept values forward, which touches only the
keys that changed more than once in the batch with a kept (not carried) value in their last change.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from lakesink.config import Dedup, Upsert
from lakesink.errors import BadRecord, ConfigError

_ROW = "__lakesink_row"


def check_columns(data: pa.Table, mode: Upsert | Dedup) -> None:
    """Every column the mode names is in `data`, keys and order hold no null, flags are bool.

    Raises:
        ConfigError: a named column is missing (the message lists the input's columns).
        BadRecord: a key or order value is null (naming the first such row) or a flag is not bool.
    """
    import pyarrow.compute as pc

    named = [*mode.key]
    if isinstance(mode, Upsert):
        named += [mode.order_by, *mode.flag_columns, *(column for column, _ in mode.keep_flags)]
    missing = [n for n in named if n not in data.column_names]
    if missing:
        raise ConfigError(f"the keyed write names column(s) {missing} that the input does not have (it has {data.column_names})")
    not_null = [*mode.key, *([mode.order_by] if isinstance(mode, Upsert) else [])]
    for name in not_null:
        nulls = data.column(name).null_count
        if nulls:
            row = pc.index(pc.is_null(data.column(name)), True).as_py()
            raise BadRecord(f"row {row} of the batch has a null {name!r}: key and order columns must be set on every row")
    if isinstance(mode, Upsert):
        for flag in mode.flag_columns:
            if not pa.types.is_boolean(data.schema.field(flag).type):
                raise BadRecord(f"flag column {flag!r} is {data.schema.field(flag).type}, not bool")


def last_change_per_key(data: pa.Table, mode: Upsert) -> pa.Table:
    """One row per key: the one with the highest `order_by` (on a tie, the later row). A kept column
    (keep flag true) of that row takes the value of the key's latest earlier change that carried it,
    with its flag cleared; if none did, it stays kept (the table's value wins in the merge).

    Only the key and order columns are sorted and grouped; the rows are taken once, and a batch
    whose keys are all distinct (inserts of new rows) is returned as it is.
    """
    import pyarrow.compute as pc

    if data.num_rows == 0:
        return data
    keys = data.select([*mode.key, mode.order_by]).append_column(_ROW, pa.array(range(data.num_rows), pa.int64()))
    if keys.group_by(list(mode.key)).aggregate([]).num_rows == data.num_rows:
        return data
    order = pc.sort_indices(keys, sort_keys=[(mode.order_by, "ascending"), (_ROW, "ascending")])
    # use_threads=False keeps the sorted order, so "last" is the latest change.
    ordered = keys.take(order).select([*mode.key, _ROW])
    last = ordered.group_by(list(mode.key), use_threads=False).aggregate([(_ROW, "last")])
    rows = pc.take(last.column(f"{_ROW}_last"), pc.sort_indices(last.column(f"{_ROW}_last")))
    collapsed = data.take(rows)
    if mode.keep_flags:
        collapsed = _carry_kept_values(collapsed, data, ordered, mode)
    return collapsed


def _carry_kept_values(collapsed: pa.Table, data: pa.Table, ordered: pa.Table, mode: Upsert) -> pa.Table:
    """Kept values of the collapsed rows filled from their key's earlier changes (in `ordered`, the
    keys and row numbers of `data` in change order). Python loops, but only over rows that need it."""
    keyed_rows: dict[tuple[object, ...], list[int]] = {}
    rows = ordered.column(_ROW).to_pylist()
    for at, key in enumerate(zip(*(ordered.column(k).to_pylist() for k in mode.key), strict=True)):
        keyed_rows.setdefault(key, []).append(rows[at])
    collapsed_keys = list(zip(*(collapsed.column(k).to_pylist() for k in mode.key), strict=True))
    for column, flag in mode.keep_flags:
        kept = collapsed.column(flag).to_pylist()
        if not any(kept):
            continue
        values = collapsed.column(column).to_pylist()
        flags = list(kept)
        source_values = data.column(column)
        source_flags = data.column(flag).to_pylist()
        for i, key in enumerate(collapsed_keys):
            if not kept[i]:
                continue
            for row in reversed(keyed_rows[key][:-1]):
                if not source_flags[row]:
                    values[i], flags[i] = source_values[row].as_py(), False
                    break
        field = collapsed.schema.field(column)
        collapsed = collapsed.set_column(collapsed.schema.get_field_index(column), field, pa.array(values, field.type))
        collapsed = collapsed.set_column(collapsed.schema.get_field_index(flag), flag, pa.array(flags, pa.bool_()))
    return collapsed


def first_row_per_key(data: pa.Table, key: Sequence[str]) -> pa.Table:
    """One row per key: the first in the batch."""
    import pyarrow.compute as pc

    if data.num_rows == 0:
        return data
    numbered = data.append_column(_ROW, pa.array(range(data.num_rows), pa.int64()))
    first = numbered.group_by(list(key), use_threads=False).aggregate([(_ROW, "first")]).column(f"{_ROW}_first")
    return data.take(pc.take(first, pc.sort_indices(first)))


def without_outdated(data: pa.Table, tombstones: pa.Table, mode: Upsert) -> pa.Table:
    """`data` without the changes older than a tombstone of their key (a delete applied, or about to
    be, with a higher order): replayed, they would bring a deleted row back."""
    import pyarrow.compute as pc

    if tombstones.num_rows == 0 or data.num_rows == 0:
        return data
    deleted_at = "__lakesink_deleted_at"
    marks = tombstones.select([*mode.key, mode.order_by]).rename_columns([*mode.key, deleted_at])
    numbered = data.append_column(_ROW, pa.array(range(data.num_rows), pa.int64()))
    joined = numbered.select([*mode.key, mode.order_by, _ROW]).join(marks, list(mode.key), join_type="left outer")
    outdated = pc.fill_null(pc.less(joined.column(mode.order_by), joined.column(deleted_at)), False)
    drop = joined.filter(outdated).column(_ROW)
    if len(drop) == 0:
        return data
    keep = pc.invert(pc.is_in(numbered.column(_ROW), value_set=drop.combine_chunks()))
    return data.filter(keep)


def deletes(data: pa.Table, mode: Upsert) -> pa.Table:
    """The tombstones a batch leaves: (key..., order) of each key whose last change deletes it."""
    import pyarrow.compute as pc

    if mode.delete_flag is None or data.num_rows == 0:
        return data.select([*mode.key, mode.order_by]).slice(0, 0)
    return data.filter(pc.fill_null(data.column(mode.delete_flag), False)).select([*mode.key, mode.order_by])
