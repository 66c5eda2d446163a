"""What an ingest run tells its caller: progress while it runs, a report when it ends."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lakesink.display import dataclass_html


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """Sent after every commit and twice a second in between: how far the run is.

    `bytes_done` counts the source files read to their end, of `bytes_total`; `records_read` the
    records read so far (some not committed yet); `rows_written` and `commits` what is committed;
    `position` the source position read up to.
    """

    bytes_done: int
    bytes_total: int
    rows_written: int
    commits: int
    position: int | None
    records_read: int = 0


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one `ingest` run did. `rows_written` and `rows_quarantined` count rows this run committed itself."""

    source: str
    table_uri: str
    app_id: str
    files_total: int
    files_read: int
    rows_written: int
    rows_quarantined: int
    bad_records_uri: str | None
    commits: int
    files_written: int
    bytes_written: int
    skipped_batches: int
    start_position: int | None
    end_position: int | None
    table_version: int | None
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def _repr_html_(self) -> str:
        return dataclass_html(self)

    def summary(self) -> str:
        quarantined = (
            f" ({self.rows_quarantined} bad records quarantined in {self.bad_records_uri})" if self.bad_records_uri else ""
        )
        return (
            f"{self.rows_written} rows{quarantined} from {self.files_read} of {self.files_total} files in {self.commits} commits "
            f"({self.skipped_batches} batches already committed) in {self.seconds:.1f}s; "
            f"position {self.end_position}, table version {self.table_version}"
        )
