"""What lakesink counts while it runs, in process: counters, gauges and a commit-latency histogram.

Recording costs a dict update under a lock and needs no dependency. The CLI exports these as
Prometheus text (`--metrics-port`, `--metrics-file`; lakesink.cli.metrics, with the official
prometheus_client); a Python user can read `METRICS.samples()` or export them the same way.

    lakesink_rows_written_total{app_id,table}          rows committed (appends and keyed writes)
    lakesink_bytes_written_total{app_id,table}         bytes of Parquet committed
    lakesink_files_written_total{app_id,table}         data files committed
    lakesink_commits_total{app_id,table}               commits this process made
    lakesink_commit_retries_total{app_id,table}        commit attempts sent again (no answer, or a lost race)
    lakesink_commit_conflicts_total{app_id,table}      another writer took the version first
    lakesink_lost_answers_resolved_total{app_id,table} commits whose answer was lost and the log showed landed
    lakesink_commit_seconds{app_id,table}              commit latency, from the first attempt to the answer (histogram)
    lakesink_in_flight_bytes                           rows read and not yet written (ingest's memory budget in use)
    lakesink_source_lag_files{app_id,table}            a watched file source's files not ingested yet
    lakesink_source_lag_bytes{app_id,table}            ... their bytes; for `cdc`, WAL bytes not yet acknowledged
    lakesink_source_offset{app_id,table,partition}     for `kafka`: the last offset of the partition in the table
    lakesink_source_lag_messages{app_id,table,partition}  for `kafka`: offsets after it, up to the high watermark last seen
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

COMMIT_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]

_HELP = {
    "lakesink_rows_written_total": "Rows committed to the table.",
    "lakesink_bytes_written_total": "Bytes of Parquet committed.",
    "lakesink_files_written_total": "Data files committed.",
    "lakesink_commits_total": "Commits this process made.",
    "lakesink_commit_retries_total": "Commit attempts sent again (no answer, or a lost race).",
    "lakesink_commit_conflicts_total": "Times another writer took the version first.",
    "lakesink_lost_answers_resolved_total": "Commits whose answer was lost and the log showed landed.",
    "lakesink_commit_seconds": "Commit latency from the first attempt to the answer.",
    "lakesink_in_flight_bytes": "Rows read and not yet written (bytes).",
    "lakesink_source_lag_files": "Source files not ingested yet.",
    "lakesink_source_lag_bytes": "Source bytes not ingested (or WAL bytes not acknowledged) yet.",
    "lakesink_source_offset": "The last offset of a source partition the table holds.",
    "lakesink_source_lag_messages": "Offsets of a source partition after the table's, up to the high watermark last seen.",
}


@dataclass(frozen=True, slots=True)
class Family:
    """One metric and its samples: (labels, value) for counters and gauges; for the histogram,
    (labels, (bucket counts, cumulative, one per bound), sum, count)."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    samples: tuple[tuple[Labels, object], ...]


class Metrics:
    """The process's figures; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, list[float]]] = {}  # bucket counts..., sum, count

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._gauges.setdefault(name, {})[key] = float(value)

    def add(self, name: str, amount: float, **labels: str) -> None:
        """Move a gauge by `amount` (negative to lower it)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._gauges.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._histograms.setdefault(name, {}).setdefault(key, [0.0] * (len(COMMIT_SECONDS_BUCKETS) + 2))
            for i, bound in enumerate(COMMIT_SECONDS_BUCKETS):
                if value <= bound:
                    counts[i] += 1
            counts[-2] += value
            counts[-1] += 1

    def families(self) -> list[Family]:
        """Every metric recorded so far, for an exporter."""
        with self._lock:
            found = [Family(n, "counter", _HELP.get(n, n), tuple(s.items())) for n, s in sorted(self._counters.items())]
            found += [Family(n, "gauge", _HELP.get(n, n), tuple(s.items())) for n, s in sorted(self._gauges.items())]
            found += [
                Family(n, "histogram", _HELP.get(n, n), tuple((k, list(v)) for k, v in s.items()))
                for n, s in sorted(self._histograms.items())
            ]
        return found

    def value(self, name: str, **labels: str) -> float:
        """A counter's or gauge's current value (0 if never recorded)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            for table in (self._counters, self._gauges):
                if key in table.get(name, {}):
                    return table[name][key]
        return 0.0


METRICS = Metrics()
"""The process's metrics: what every part of lakesink records into."""
