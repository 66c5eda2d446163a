"""delta-rs (and pyarrow) errors as lakesink errors: one line each, secrets and colours scrubbed."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

from deltalake.exceptions import DeltaError, DeltaProtocolError

from lakesink.errors import ConfigError, StorageUnavailable, TableError, TransientError
from lakesink.storage.options import StorageOptions, redact


class CommitConflict(TransientError):
    """delta-rs refused a commit: another writer committed since the snapshot (lakesink.commit re-checks)."""


class CommitNotAnswered(TransientError):
    """A delta-rs commit attempt failed: it may or may not have landed (lakesink.commit reads the log to decide)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def translate(exc: BaseException, options: StorageOptions | None, *, doing: str) -> Exception:
    """A lakesink error for a delta-rs/pyarrow error, with secrets and terminal colours scrubbed.

    Store errors are summed up in one line (request, status and S3 error code, or the network
    failure, and the retries spent); the full delta-rs error stays chained as `__cause__`.
    """
    text = _ANSI.sub("", redact(str(exc), options))
    lowered = text.lower()
    detail = describe_store_error(text) or _first_lines(text)
    if isinstance(exc, DeltaProtocolError):
        return TableError(f"cannot {doing}: {_first_lines(text)}. The table needs a newer writer than lakesink's delta-rs.")
    if isinstance(exc, (ValueError, TypeError)):
        return ConfigError(f"cannot {doing}: {_first_lines(text)}")
    if "nosuchbucket" in lowered:
        return ConfigError(f"cannot {doing}: the bucket does not exist. Create it, or fix the table URI.")
    if any(code in lowered for code in _CREDENTIAL_ERRORS):
        return ConfigError(f"cannot {doing}: the store refused the credentials ({detail}). Check AWS_* settings.")
    if "not a delta table" in lowered or "no files in log segment" in lowered:
        return TableError(f"cannot {doing}: {detail}. Point lakesink at a Delta table or an empty location.")
    if _UNREADABLE_LOG.search(text):
        return TableError(
            f"cannot {doing}: the Delta log is not one lakesink can read ({detail}). Point lakesink at a Delta "
            "table it supports, or an empty location."
        )
    if isinstance(exc, (OSError, DeltaError)) or "generic" in lowered:
        return StorageUnavailable(f"cannot {doing}: {detail}. The store is unreachable or failing: check the endpoint, rerun.")
    return TableError(f"cannot {doing}: {_first_lines(text)}")


_CREDENTIAL_ERRORS = ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "403 forbidden", "invalidtoken")
# delta-kernel's errors about the log's content (never about the store answering): "Kernel error:
# Json error: ...", "... No table metadata or protocol found ...", "Unsupported: Feature 'x' ...".
_UNREADABLE_LOG = re.compile(r"Kernel error: (Unsupported|Json error|No table metadata or protocol)", re.I)
_REQUEST = re.compile(
    r"Error performing (?P<method>[A-Z]+) (?P<url>\S+) in (?P<elapsed>[^,\s]+)(?:, after (?P<retries>\d+) retries)?"
)
_STATUS = re.compile(r"^\s*(?:↳\s*)?(?P<status>[1-5]\d\d) (?P<reason>[A-Za-z][A-Za-z ]*)$", re.M)
# object_store's LIST errors say it inline: "... - Server returned non-2xx status code: 503 Service Unavailable: <?xml..."
_STATUS_INLINE = re.compile(r"status code: (?P<status>[1-5]\d\d) (?P<reason>[A-Za-z][A-Za-z ]*)")
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")


def describe_store_error(text: str) -> str | None:
    """One line for an object_store error chain: what was asked, what came back, how often.

    "GET /bkt/t/_delta_log/_last_checkpoint: 503 SlowDown (Please reduce your request rate.),
    after 5 retries in 2.1s", or "...: Connection reset by peer (os error 104), ...". None when
    `text` is not such a chain.
    """
    request = _REQUEST.search(text)
    if request is None:
        return None
    url = urlparse(request["url"])
    target = url.path
    prefix = parse_qs(url.query).get("prefix")
    if prefix:
        target = f"{url.path} (list {prefix[0]})"
    status = _STATUS.search(text) or _STATUS_INLINE.search(text)
    code, message = _S3_CODE.search(text), _S3_MESSAGE.search(text)
    if status is not None:
        answer = f"{status['status']} {code[1] if code else status['reason'].strip()}" + (f" ({message[1]})" if message else "")
    else:
        causes = [line.strip(" ↳\t") for line in text.splitlines() if "↳" in line]
        answer = causes[-1] if causes else "no answer"
    retries = f"after {request['retries']} retries " if request["retries"] else ""
    return f"{request['method']} {target}: {answer}, {retries}in {request['elapsed']}"


def _first_lines(text: str, limit: int = 300) -> str:
    """The message without delta-rs's backtrace ("   0: <unknown>", ...), cut to `limit` characters."""
    lines = []
    for line in text.splitlines():
        if re.match(r"^\s*\d+: ", line):
            break
        if line.strip():
            lines.append(line.strip())
    joined = " ".join(lines)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."
