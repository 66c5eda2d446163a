"""One split of a file source per job: a run that would change how a job's files are split is refused.

A sharded job (`ingest --shard I/N`) commits shard I's position under `<app id>/shard-I-of-N`
(lakesink.layout.shard_app_id), and that position counts the files of shard I of N only
(lakesink.sources.files.shard_of). Split another way (another N, or not at all), the same source
puts other files in each shard, so no position the job holds says which of them are ingested:
going on would ingest files again or skip them. So before it reads anything, a run checks the
table's `txn`s of its app id: the job itself (an unsharded run's position), and its shards
under each count, and stops with a ConfigError when they were committed under another split.
"""

from __future__ import annotations

import logging

from lakesink.config import Shard
from lakesink.delta.log_reader import txn_versions
from lakesink.errors import ConfigError, LakesinkError
from lakesink.layout import parse_shard_app_id, shard_app_id
from lakesink.sink import Sink

log = logging.getLogger(__name__)

_NAMED = 4  # shard app ids a message names before "..."


def check_shard_layout(sink: Sink, *, app_id: str, shard: Shard | None) -> None:
    """Refuse to run job `app_id` as `shard` (None: over the whole source) when the table of `sink`
    (as of its snapshot: no request) holds positions of the job committed under another split.

    Raises:
        ConfigError: naming the positions the table holds, and what to do.
    """
    handle = sink.handle
    if handle is None:
        return  # no table yet: nothing committed under any split
    positions = _job_positions(sink, app_id)
    if positions is None:
        # Only the job's own app id can be named without listing: a shard layout is not checked.
        unsharded = handle.committed_position(app_id)
        positions = {app_id: unsharded} if unsharded is not None else {}
        log.warning(
            "cannot list the txns of %s (delta-rs reads its log): checked only that app id %r holds no position of "
            "its own; positions of its shards under another count are not checked",
            sink.uri, app_id,
        )  # fmt: skip
    by_count: dict[int, list[str]] = {}
    for txn_app_id in sorted(positions, key=_shard_order):
        parsed = parse_shard_app_id(txn_app_id)
        if parsed is not None and parsed[0] == app_id:
            by_count.setdefault(parsed[2], []).append(txn_app_id)
    this_run = shard_app_id(app_id, shard.index, shard.count) if shard is not None else None
    if shard is not None and app_id in positions:
        raise ConfigError(
            f"{sink.uri} holds position {positions[app_id]} of app id {app_id!r} itself, committed by runs over the "
            f"whole source, but this run is {this_run}. That position counts the files of the whole source, so "
            f"shards would ingest them again: nothing was written. Keep running the job unsharded (without "
            f"shard=I/N); or, to split it, let it finish, then run the shards under a new app_id with a SOURCE that "
            f"lists only files it has not ingested (or ingest everything again into a new table).",
            options=("app_id", "shard"),
        )
    others = {count: apps for count, apps in by_count.items() if shard is None or count != shard.count}
    if not others:
        return
    held = "; ".join(_describe(count, apps) for count, apps in sorted(others.items()))
    counts = sorted(others)
    keep = " or ".join(f"shard=I/{n} for I in 0..{n - 1}" for n in counts)
    whole = f"this run reads the whole source under app id {app_id!r} itself"
    doing = f"this run is {this_run}" if this_run is not None else whole
    raise ConfigError(
        f"{sink.uri} holds positions of app id {app_id!r} split into shards ({held}), but {doing}. A shard's position "
        f"counts only the files of its own split, so another split would ingest files again or skip them: nothing "
        f"was written. Keep the job's split ({keep}); or, to change it, let the current shards finish, then run the "
        f"new split under a new app_id with a SOURCE that lists only files they have not ingested (or ingest "
        f"everything again into a new table).",
        options=("shard", "app_id"),
    )


def _job_positions(sink: Sink, app_id: str) -> dict[str, int] | None:
    """{txn app id: position} of every `txn` in the sink's snapshot (the job's and any other), or
    None when they cannot be listed (delta-rs reads this table's log)."""
    handle = sink.handle
    assert handle is not None
    known = handle.known_txns()
    if known is not None:
        return known
    try:
        # A table letting txns expire: the log as lakesink reads it (expired or not, a position
        # still tells under which split the job ran).
        return txn_versions(sink.store, up_to=handle.version())
    except (LakesinkError, OSError, ValueError, KeyError) as exc:
        log.info("listing the txns of %s for app id %r failed: %s", sink.uri, app_id, exc)
        return None


def _shard_order(txn_app_id: str) -> tuple[str, int, int]:
    parsed = parse_shard_app_id(txn_app_id)
    return (parsed[0], parsed[2], parsed[1]) if parsed is not None else (txn_app_id, 0, 0)


def _describe(count: int, apps: list[str]) -> str:
    named = ", ".join(apps[:_NAMED]) + (", ..." if len(apps) > _NAMED else "")
    return f"{len(apps)} of {count} shards committed: {named}"
