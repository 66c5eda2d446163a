"""`--metrics-port` / `--metrics-file`: lakesink.metrics as Prometheus text, through the official
prometheus_client (an HTTP endpoint on 127.0.0.1 unless told otherwise, and/or a textfile for
node_exporter's textfile collector, rewritten every 10 s and at exit)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import click

from lakesink.errors import ConfigError
from lakesink.metrics import COMMIT_SECONDS_BUCKETS, METRICS

METRICS_HELP_PORT = "Serve Prometheus metrics on this port (http://HOST:PORT/metrics) while the job runs."
METRICS_HELP_HOST = "Address the metrics endpoint binds (loopback by default; 0.0.0.0 exposes it to the network)."
METRICS_HELP_FILE = "Write Prometheus metrics to this file every 10 s and at exit (node_exporter's textfile collector)."


class _Collector:
    """Reads lakesink.metrics at each scrape."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for family in METRICS.families():
            names = sorted({key for labels, _ in family.samples for key, _ in labels})
            if family.kind == "counter":
                metric: Any = CounterMetricFamily(family.name.removesuffix("_total"), family.help, labels=names)
            elif family.kind == "gauge":
                metric = GaugeMetricFamily(family.name, family.help, labels=names)
            else:
                metric = HistogramMetricFamily(family.name, family.help, labels=names)
            for labels, value in family.samples:
                label_values = [dict(labels).get(n, "") for n in names]
                if family.kind == "histogram":
                    counts = list(value)  # type: ignore[call-overload]
                    buckets = [(str(b), counts[i]) for i, b in enumerate(COMMIT_SECONDS_BUCKETS)] + [("+Inf", counts[-1])]
                    metric.add_metric(label_values, buckets=buckets, sum_value=counts[-2])
                else:
                    metric.add_metric(label_values, value)
            yield metric


class MetricsExport:
    """The exporters a command asked for, started on enter and stopped (textfile written) on exit."""

    def __init__(self, *, port: int | None, host: str, textfile: str | None, every: float = 10.0) -> None:
        self.port, self.host, self.textfile, self.every = port, host, textfile, every
        self._server: Any = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._registry: Any = None

    def __enter__(self) -> MetricsExport:
        if self.port is None and self.textfile is None:
            return self
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise ConfigError("metrics need prometheus_client: pip install 'lakesink[metrics]'") from None
        self._registry = CollectorRegistry()
        self._registry.register(_Collector())
        if self.port is not None:
            try:
                self._server, _ = start_http_server(self.port, addr=self.host, registry=self._registry)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}") from exc
            click.echo(f"metrics: http://{self.host}:{self._server.server_port}/metrics", err=True)
        if self.textfile is not None:
            self._write()
            self._writer = threading.Thread(target=self._keep_writing, name="lakesink-metrics-file", daemon=True)
            self._writer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=5)
            self._write()
        if self._server is not None:
            self._server.shutdown()

    def _keep_writing(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def _write(self) -> None:
        from prometheus_client import write_to_textfile

        assert self.textfile is not None
        write_to_textfile(self.textfile, self._registry)  # written beside it, then renamed: never read half-written
