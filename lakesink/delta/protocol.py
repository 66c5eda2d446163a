"""What lakesink can append to: a table's writer protocol checked against a plain append of Parquet files.

lakesink commits Parquet files it wrote itself (`add` actions), so a table feature that asks a
writer for more than that (compute a generated column, check a constraint, write physical column
names, assign row ids, ...) would be silently broken by its commits, even where delta-rs would
accept them. Those tables are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

MAX_WRITER_VERSION = 7
# Writer features a plain append honours whatever the table does with them.
_APPEND_SAFE_WRITER_FEATURES = frozenset({"appendOnly", "changeDataFeed", "timestampNtz", "deletionVectors"})
# Writer features a plain append honours only while the table does not use them (see _in_use).
_APPEND_SAFE_UNLESS_USED = frozenset({"invariants", "checkConstraints", "generatedColumns", "columnMapping"})
# The features writer versions 2..6 imply (before table features, writer version 7).
_LEGACY_WRITER_FEATURES = {
    2: ("appendOnly", "invariants"),
    3: ("checkConstraints",),
    4: ("changeDataFeed", "generatedColumns"),
    5: ("columnMapping",),
    6: ("identityColumns",),
}


def writer_protocol_problems(
    min_writer_version: int, writer_features: Sequence[str] | None, configuration: dict[str, str], schema_json: str
) -> list[str]:
    """Why a plain append of Parquet files would not honour this writer protocol (empty: it would)."""
    if min_writer_version > MAX_WRITER_VERSION:
        return [f"the table needs writer version {min_writer_version} (lakesink writes up to {MAX_WRITER_VERSION})"]
    if min_writer_version == MAX_WRITER_VERSION:
        features = list(writer_features or ())
    else:
        features = [f for version, named in _LEGACY_WRITER_FEATURES.items() if version <= min_writer_version for f in named]
    problems = []
    unknown = [f for f in features if f not in _APPEND_SAFE_WRITER_FEATURES | _APPEND_SAFE_UNLESS_USED]
    if unknown:
        problems.append(f"the table requires writer feature(s) {', '.join(unknown)}, which lakesink does not support")
    used = [f for f in features if f in _APPEND_SAFE_UNLESS_USED and _in_use(f, configuration, schema_json)]
    if used:
        problems.append(f"the table uses {', '.join(used)}, which lakesink's appends would not honour")
    return problems


def _in_use(feature: str, configuration: dict[str, str], schema_json: str) -> bool:
    if feature == "checkConstraints":
        return any(k.startswith("delta.constraints.") for k in configuration)
    if feature == "columnMapping":
        return configuration.get("delta.columnMapping.mode", "none").lower() != "none"
    field_key = {"invariants": "delta.invariants", "generatedColumns": "delta.generationExpression"}[feature]
    return any(field_key in metadata for metadata in _field_metadata(json.loads(schema_json)))


def _field_metadata(node: Any) -> Iterator[dict[str, Any]]:
    """The `metadata` of every field of a Delta schema (JSON), nested fields included."""
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict):
            yield node["metadata"]
        for value in node.values():
            yield from _field_metadata(value)
    elif isinstance(node, list):
        for value in node:
            yield from _field_metadata(value)


def new_table_protocol(schema_json: str) -> dict[str, Any]:
    """The `protocol` action of a new table with this schema, as delta-rs chooses it: reader 1 /
    writer 2, or 3 / 7 with the `timestampNtz` feature when a timestamp without time zone is used."""
    if any(node == "timestamp_ntz" for node in _types(json.loads(schema_json))):
        return {
            "minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["timestampNtz"], "writerFeatures": ["timestampNtz"]
        }  # fmt: skip
    return {"minReaderVersion": 1, "minWriterVersion": 2}


def _types(node: Any) -> Iterator[Any]:
    """Every type in a Delta schema (the `type`, `elementType`, `keyType`, `valueType` values)."""
    if isinstance(node, dict):
        for key in ("type", "elementType", "keyType", "valueType"):
            if key in node:
                yield node[key]
                yield from _types(node[key])
        for child in node.get("fields", ()):
            yield from _types(child)
