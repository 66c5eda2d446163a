"""`--log-format json`: one JSON object per log event, for log pipelines.

Each object has `time` (UTC, ISO 8601), `level`, `logger` and `message`, plus the event's fields
where it has them: app_id, table, version, position, rows, bytes, files, seconds. Messages are the
same as the text log's, which never hold a secret (storage options are redacted before logging).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

EVENT_FIELDS = ("app_id", "table", "version", "position", "rows", "bytes", "files", "seconds", "commits", "changes")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(event, default=str)
