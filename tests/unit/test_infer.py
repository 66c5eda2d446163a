"""lakesink.sources.infer: a new table's types from a sample across the files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from lakesink.sources.files import FilePosition, FileSource
from lakesink.sources.infer import infer_schema


def inferred(tmp_path: Path, *files: list[dict[str, object]]) -> dict[str, pa.DataType]:
    for number, records in enumerate(files):
        (tmp_path / f"{number}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))
    schema = infer_schema(FileSource(str(tmp_path)), FilePosition(0, 0))
    assert schema is not None
    return {f.name: f.type for f in schema}


def test_fractions_in_a_later_file_widen_whole_numbers_to_double(tmp_path: Path) -> None:
    assert inferred(tmp_path, [{"a": 1}, {"a": 2}], [{"a": 2.5}])["a"] == pa.float64()


def test_integers_a_double_cannot_hold_keep_the_column_integer(tmp_path: Path) -> None:
    assert inferred(tmp_path, [{"a": 2**60}], [{"a": 2.5}])["a"] == pa.int64()


def test_dates_and_timestamps_are_read_by_their_text(tmp_path: Path) -> None:
    types = inferred(
        tmp_path,
        [{"d": "2026-11-01", "z": "2026-11-01T12:00:00Z", "o": "2026-11-01T12:00:00+02:00", "n": "2026-11-01 12:00:00"}],
        [{"d": "2026-11-02", "z": "2026-11-01T12:00:00.25Z", "o": "2026-11-01T12:00:00-0530", "n": None}],
    )
    assert types == {
        "d": pa.date32(),
        "z": pa.timestamp("us", tz="UTC"),
        "o": pa.timestamp("us", tz="UTC"),
        "n": pa.timestamp("us"),
    }


def test_other_disagreements_keep_the_first_type(tmp_path: Path) -> None:
    types = inferred(tmp_path, [{"a": 1, "s": "x"}], [{"a": "one", "s": "2026-11-01"}])
    assert types == {"a": pa.int64(), "s": pa.string()}
