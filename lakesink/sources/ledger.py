"""Source ledgers: what a commit of a file source records, so a resume can prove the files did not change.

Each commit stages a ledger beside the table (lakesink.layout.ledger_path) holding a hash chain
over (path, size, mtime) of every file the position covers, and the entries of the batch's files.
On resume the chain is recomputed from a fresh listing; any difference is a SourceContractViolation
naming the file, never a silent skip or duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict

from lakesink.errors import SourceContractViolation
from lakesink.sources.positions import FilePosition
from lakesink.sources.records import SourceFile


def file_chain(files: Sequence[SourceFile], count: int) -> str:
    """The hash chain over (path, size, mtime) of files[0..count)."""
    digest = hashlib.sha256(b"lakesink-file-chain-v1")
    for f in files[:count]:
        digest.update(json.dumps([f.path, f.size, f.mtime_ns]).encode())
    return digest.hexdigest()


def ledger_body(files: Sequence[SourceFile], *, app_id: str, end: FilePosition, batch_files: Sequence[int]) -> bytes:
    """The ledger staged before committing `end`: enough to verify the source on resume."""
    body = {
        "app_id": app_id,
        "position": end.encode(),
        "file_index": end.file_index,
        "row": end.row,
        "covered_files": end.covered_files(),
        "chain": file_chain(files, end.covered_files()),
        "files": [{"index": i, **asdict(files[i])} for i in batch_files],
    }
    return json.dumps(body, indent=1, sort_keys=True).encode()


def verify_ledger(files: Sequence[SourceFile], *, uri: str, committed: FilePosition, ledger: bytes | None) -> None:
    """Check that the files behind `committed` are exactly those the ledger recorded.

    Raises:
        SourceContractViolation: a covered file changed, vanished, or a new one sorts before it.
    """
    covered = committed.covered_files()
    if ledger is None:
        raise SourceContractViolation(
            f"the table holds position {committed.encode()} for this app id but no source ledger for it: "
            "was the app id written by another program? Use a new app_id (and table) for this source.",
            options=("app_id",),
        )
    recorded = json.loads(ledger)
    if covered > len(files):
        raise SourceContractViolation(
            f"the committed position covers {covered} files but {uri} now lists {len(files)}: "
            "ingested files were removed. Restore them, or ingest into a new table."
        )
    if recorded["chain"] == file_chain(files, covered):
        return
    for entry in recorded["files"]:
        now = files[entry["index"]]
        if now.path != entry["path"]:
            raise SourceContractViolation(
                f"file #{entry['index']} was {entry['path']!r} when committed and is now {now.path!r}: "
                "a file was added or removed before it. New files must sort after every ingested one "
                "(e.g. name them by time); restore the listing or ingest into a new table."
            )
        if (now.size, now.mtime_ns) != (entry["size"], entry["mtime_ns"]):
            raise SourceContractViolation(
                f"{now.path!r} changed after it was ingested (size {entry['size']} -> {now.size}, "
                "or modification time): files are treated as immutable. Write changes as new files."
            )
    first = recorded["files"][0]["path"] if recorded["files"] else "the last committed file"
    raise SourceContractViolation(
        f"a file at or before {first!r} changed, vanished or a new one sorts before it since it was "
        "ingested: files are treated as immutable and new files must sort after ingested ones."
    )
