"""Generative round trip: whatever Arrow data a user sends, every reader reads back exactly the rows
written, statistics never lie, data skipping never drops a row, and time travel and checkpoints
agree (tests/support/round_trip.py draws the cases and holds the checks).

Bounded and seeded in the normal suite; a long run (and one against write_deltalake for the same
data) is `LAKESINK_ROUND_TRIP_EXAMPLES=2000 LAKESINK_ROUND_TRIP_SEED=7 pytest --timeout 0 tests/scenarios/test_round_trip.py`
and `python tools/round_trip_report.py`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from deltalake import DeltaTable
from hypothesis import HealthCheck, given, seed, settings

import lakesink
from tests.support.round_trip import Case, cases, check_rows, check_skipping, check_stats

EXAMPLES = int(os.environ.get("LAKESINK_ROUND_TRIP_EXAMPLES", "30"))
SEED = int(os.environ.get("LAKESINK_ROUND_TRIP_SEED", "20261201"))


def write_with_lakesink(uri: str, case: Case) -> list[int]:
    """Each batch as one `Sink.write` (new columns evolve the table); the table version after each."""
    versions = []
    with lakesink.Sink(uri, app_id="round-trip", partition_by=case.partition_by, evolve_schema=True) as sink:
        for position, batch in enumerate(case.batches, start=1):
            versions.append(sink.write(batch, position=position).table_version)
    return versions


def check_everything(uri: str, case: Case, versions: list[int]) -> list[str]:
    last = len(case.batches) - 1
    problems = check_rows(uri, case, upto=last, what="latest: ")
    for number, version in enumerate(versions):
        problems += check_rows(uri, case, upto=number, version=version, what=f"version {version}: ")
    problems += check_stats(uri)
    problems += check_skipping(uri, case)
    DeltaTable(uri).create_checkpoint()
    problems += check_rows(uri, case, upto=last, what="after a checkpoint: ")
    return problems


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_every_reader_reads_back_exactly_what_lakesink_wrote(case: Case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "table")
        versions = write_with_lakesink(uri, case)
        problems = check_everything(uri, case, versions)
        assert not problems, f"{case.describe()}\n" + "\n".join(problems)
