"""Options: no option silently overrides another, secrets never print, and the CLI names its flags."""

from __future__ import annotations

import pytest

import lakesink
from lakesink.cli.output import as_flags
from lakesink.errors import BadRecord, ConfigError, SchemaMismatch
from lakesink.storage.options import StorageOptions, redact


def test_two_options_setting_the_same_limit_are_refused_before_anything_is_read(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="both set the records per commit"):
        lakesink.ingest("/nonexistent", "/nowhere", app_id="a", batch_rows=5, commit_interval=lakesink.CommitInterval(rows=3))
    with pytest.raises(ConfigError, match="given twice"):
        lakesink.ingest(
            "/nonexistent",
            "/nowhere",
            app_id="a",
            commit_interval=lakesink.CommitInterval(seconds=5),
            write=lakesink.WriteConfig(interval=lakesink.CommitInterval(bytes=1 << 20)),
        )
    with pytest.raises(ConfigError, match="batch_rows must be a positive int"):
        lakesink.ingest("/nonexistent", "/nowhere", app_id="a", batch_rows=0)


def test_library_errors_name_api_options_and_the_cli_says_the_flags() -> None:
    too_long = BadRecord("a.ndjson:4: too long. Raise the limit: max_record_bytes=BYTES; or not.", options=("max_record_bytes",))
    assert as_flags(too_long) == "a.ndjson:4: too long. Raise the limit: --max-record-bytes BYTES; or not."
    new_column = SchemaMismatch("pass evolve_schema=True, or drop them", options=("evolve_schema",))
    assert as_flags(new_column) == "pass --evolve-schema, or drop them"
    assert as_flags(BadRecord("evolve_schema=True untouched")) == "evolve_schema=True untouched"  # names no option


def test_secrets_are_hidden_from_repr_and_redacted_from_text() -> None:
    options = StorageOptions.resolve({"aws_secret_access_key": "canary-secret-123", "AWS_REGION": "eu-west-1"}, environ={})
    assert "canary" not in repr(options) and "eu-west-1" in repr(options)
    assert redact("failed with canary-secret-123 in it", options) == "failed with *** in it"


def test_storage_timeouts_are_checked_and_given_to_delta_rs_in_one_form() -> None:
    settings = StorageOptions.resolve({"timeout": "2m", "max_retries": "3"}, environ={}).for_delta()
    assert (settings["timeout"], settings["max_retries"], settings["connect_timeout"]) == ("120000ms", "3", "5000ms")
    with pytest.raises(ConfigError, match="storage option TIMEOUT='soon'"):
        StorageOptions.resolve({"TIMEOUT": "soon"}, environ={}).for_delta()
