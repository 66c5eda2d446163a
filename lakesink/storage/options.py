"""Storage options: the AWS settings from the environment and the caller, retry defaults, redaction.

The same options feed all three clients (delta-rs for the log, pyarrow for data files and file
sources, boto3 for the log entries lakesink creates), so all talk to the same endpoint with the
same timeouts and retry budget (`RETRY_DEFAULTS`): a store that stops answering fails a run with a
TransientError after a bounded time, never hangs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lakesink.config import parse_duration
from lakesink.errors import ConfigError

# Options whose values may be shown; every other value is treated as a secret.
_PUBLIC_OPTION_KEYS = frozenset(
    {
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ALLOW_HTTP",
        "AWS_S3_ALLOW_UNSAFE_RENAME",
        "AWS_CONDITIONAL_PUT",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
        "TIMEOUT",
        "CONNECT_TIMEOUT",
        "MAX_RETRIES",
        "RETRY_TIMEOUT",
        "BACKOFF_CONFIG.INIT_BACKOFF",
        "BACKOFF_CONFIG.MAX_BACKOFF",
        "BACKOFF_CONFIG.BASE",
    }
)

# Timeouts and retries for every request to an object store, unless the options say otherwise.
# delta-rs's object_store alone would retry a request up to 10 times for up to 3 minutes, and
# lakesink's commit loop retries whole operations on top of that. These keep one unanswered
# delta-rs request to about a minute and a half (retry_timeout, plus the attempt under way) and a
# pyarrow one to MAX_RETRIES + 1 stalls of TIMEOUT, so a black-holed store ends a run with exit 75
# in minutes (worst case, a commit whose outcome must be read back: ~10). Bursts of 5xx (SlowDown,
# InternalError) and resets are absorbed by the retries, with exponential backoff and jitter.
RETRY_DEFAULTS: Mapping[str, str] = {
    "CONNECT_TIMEOUT": "5s",  # to open a connection (both clients)
    "TIMEOUT": "30s",  # delta-rs: a whole request; pyarrow: a request that stalls (no byte moves)
    "MAX_RETRIES": "5",  # retries of a failed request (pyarrow: MAX_RETRIES + 1 attempts)
    "RETRY_TIMEOUT": "60s",  # delta-rs: no new retry after this long since the first attempt
}
_ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ALLOW_HTTP",
)
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """Options for the object store, with secrets hidden from `repr` and `str`.

    Keys follow delta-rs (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...).
    """

    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, explicit: Mapping[str, str] | None = None, *, environ: Mapping[str, str] | None = None) -> StorageOptions:
        """Standard AWS environment variables, overridden by `explicit` (keys upper-cased)."""
        env = os.environ if environ is None else environ
        merged: dict[str, str] = {}
        for key in _ENV_KEYS:
            if env.get(key):
                merged[key] = env[key]
        if "AWS_REGION" not in merged and env.get("AWS_DEFAULT_REGION"):
            merged["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
        for key, value in (explicit or {}).items():
            merged[key.upper()] = str(value)
        return cls(values=merged)

    def for_delta(self) -> dict[str, str]:
        """The options as delta-rs takes them, with lakesink's timeout and retry defaults.

        Those keys are passed in lower case: delta-rs reads its retry config (`max_retries`,
        `retry_timeout`, `backoff_config.*`) in lower case only and ignores any other spelling.

        Raises:
            ConfigError: a timeout or retry option that is not a duration / count.
        """
        delta = dict(self.values)
        for key, value in self.retry_settings().items():
            for given in [k for k in delta if k.upper() == key]:
                del delta[given]
            delta[key.lower()] = value
        return delta

    def retry_settings(self) -> dict[str, str]:
        """`RETRY_DEFAULTS` overridden by the options (keys upper-case), each checked.

        Raises:
            ConfigError: a timeout that is not a duration ("30s", "500ms", "2m", or seconds) or a
                retry count that is not a non-negative integer.
        """
        given = {k.upper(): v for k, v in self.values.items()}
        settings = {key: given.get(key, default) for key, default in RETRY_DEFAULTS.items()}
        settings.update({k: v for k, v in given.items() if k.startswith("BACKOFF_CONFIG.")})
        for key in ("CONNECT_TIMEOUT", "TIMEOUT", "RETRY_TIMEOUT"):
            seconds = parse_duration(settings[key], what=f"storage option {key}")
            settings[key] = f"{round(seconds * 1000)}ms"  # the one form both parsers agree on
        if not settings["MAX_RETRIES"].strip().isdigit():
            raise ConfigError(f"storage option MAX_RETRIES={settings['MAX_RETRIES']!r} must be a whole number >= 0")
        settings["MAX_RETRIES"] = str(int(settings["MAX_RETRIES"]))
        return settings

    def secrets(self) -> list[str]:
        """Every value that must never be printed."""
        return [v for k, v in self.values.items() if k.upper() not in _PUBLIC_OPTION_KEYS and v]

    def redacted(self) -> dict[str, str]:
        return {k: (v if k.upper() in _PUBLIC_OPTION_KEYS else REDACTED) for k, v in self.values.items()}

    def __repr__(self) -> str:
        return f"StorageOptions({self.redacted()!r})"

    __str__ = __repr__


def redact(text: str, options: StorageOptions | None) -> str:
    """`text` with every secret value of `options` (and any AWS-looking secret) replaced."""
    if options is not None:
        for secret in sorted(options.secrets(), key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, REDACTED)
    return re.sub(r"(?i)(secret[_-]?access[_-]?key|session[_-]?token)(\W+)\S+", r"\1\2" + REDACTED, text)
