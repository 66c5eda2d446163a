"""The dead-letter table of `lakesink kafka`: messages that are not one JSON object (or do not fit
the table), each kept exactly once with its topic, partition, offset and why.

It is a Delta table of its own, with a `txn` per topic partition as the main table has
(`<app id>/<topic>/<partition>`): every bad message up to that offset is in it, once. A batch's bad
messages are committed here *before* the batch's rows, at the same offsets, so a crash between the
two leaves the batch to be read again, and the second time round its bad messages are skipped
here. Only the messages after the offset this table holds are written, and only while it still
holds that offset (`previous`): a concurrent member (a zombie) can never make one appear twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from lakesink.errors import ConfigError, SchemaMismatch
from lakesink.sink import Part, Sink
from lakesink.sources.kafka_decode import Decoded, KafkaRejected
from lakesink.write.schema import fit

KAFKA_DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("app_id", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)
"""One row per bad message: the job's app id, where the message is, why it was refused, its value as text."""


class KafkaQuarantine:
    """Writes bad messages to the dead-letter table at `table_uri`, each exactly once."""

    def __init__(self, table_uri: str, *, app_id: str, storage_options: Mapping[str, str] | None = None) -> None:
        self._sink = Sink(table_uri, app_id=app_id, storage_options=dict(storage_options or {}))
        self.uri = self._sink.uri
        self.app_id = app_id
        handle = self._sink.handle
        if handle is not None:  # checked before the run reads a message, not at its first bad one
            try:
                fit(KAFKA_DEAD_LETTER_SCHEMA.empty_table(), handle.arrow_schema(), evolve=False)
            except SchemaMismatch as exc:
                raise self._not_dead_letter(exc) from exc

    def close(self) -> None:
        self._sink.close()

    def write(self, batch: Sequence[Decoded]) -> int:
        """Commit the bad messages of `batch` (one Decoded per partition) this table does not hold
        yet, in one commit; how many were written.

        Raises:
            ConfigError: the table at the path is not a Kafka dead-letter table.
            ConcurrentWriterError, CommitOutcomeUnknown, StorageUnavailable: see lakesink.errors.
        """
        with_bad = [d for d in batch if d.rejected]
        written = 0
        while with_bad:
            parts, todo = [], []
            for d in with_bad:
                held = self._sink.committed_position(part=d.partition.key)
                if held is not None and held >= d.last_offset:
                    continue
                rows = [r for r in d.rejected if held is None or r.offset > held]
                rows_table = dead_letter_rows(rows, app_id=self.app_id)
                parts.append(Part(d.partition.key, rows_table, position=d.last_offset, previous=held))
                todo.append(d)
            if not parts:
                break
            try:
                result = self._sink.write_parts(parts)
            except SchemaMismatch as exc:
                raise self._not_dead_letter(exc) from exc
            written += sum(r.rows for r in result.parts if r.committed)
            # A stale part: a concurrent member quarantined some of them since; look again.
            with_bad = [d for d, r in zip(todo, result.parts, strict=True) if r.status == "stale"]
        return written

    def _not_dead_letter(self, exc: SchemaMismatch) -> ConfigError:
        return ConfigError(
            f"{self.uri} is not a Kafka dead-letter table ({exc}): pass bad_records=PATH with a new path, or one an "
            "earlier `lakesink kafka` run with bad_records created",
            options=("bad_records",),
        )


def dead_letter_rows(rejected: Sequence[KafkaRejected], *, app_id: str) -> pa.Table:
    """The dead-letter table's rows for `rejected`."""
    return pa.table(
        {
            "app_id": [app_id] * len(rejected),
            "topic": [r.partition.topic for r in rejected],
            "partition": [r.partition.partition for r in rejected],
            "offset": [r.offset for r in rejected],
            "reason": [r.reason for r in rejected],
            "raw": [r.raw for r in rejected],
        },
        schema=KAFKA_DEAD_LETTER_SCHEMA,
    )
