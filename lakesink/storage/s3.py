"""S3 requests pyarrow cannot make: a create-only PUT (If-None-Match), a plain GET and a LIST from
a key on, through boto3.

Used for the log entries lakesink commits (lakesink.delta.log_store) and for staged files named by
their content (ArrowObjectStore.create_bytes). boto3 gets the endpoint, credentials, timeouts and
retry budget delta-rs and pyarrow get. boto3 re-sends a PUT whose answer was lost; for a
create-only PUT that is safe: a re-sent create of an object that landed is refused (412).
"""

from __future__ import annotations

from typing import Any

from lakesink.config import parse_duration
from lakesink.errors import ConfigError, LakesinkError, StorageUnavailable
from lakesink.storage.options import StorageOptions, redact


def put_if_absent(client: Any, bucket: str, key: str, body: bytes, options: StorageOptions) -> bool | None:
    """Create `key` with `body` unless it exists: True if this call created it, False if it exists
    (or another create of it is in flight), None if the store has no conditional PUT.

    Raises:
        StorageUnavailable: no answer; the object may or may not have been created.
        ConfigError: the store refused the credentials, or the bucket does not exist.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as exc:
        status, code = _status(exc)
        if status == 412 or code == "PreconditionFailed":
            return False
        if status == 409 or code == "ConditionalRequestConflict":
            return False  # another create of this key is in flight: the caller reads what is there
        if status == 501 or code == "NotImplemented":
            return None
        raise request_error("PUT", bucket, key, exc, options) from exc
    except BotoCoreError as exc:
        raise request_error("PUT", bucket, key, exc, options) from exc
    return True


def get_or_none(client: Any, bucket: str, key: str, options: StorageOptions) -> bytes | None:
    """The object `key`, or None if there is none.

    Raises:
        StorageUnavailable: the store did not answer.
        ConfigError: the store refused the credentials, or the bucket does not exist.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.get_object(Bucket=bucket, Key=key)
        return bytes(answer["Body"].read())
    except ClientError as exc:
        status, code = _status(exc)
        if status == 404 and code != "NoSuchBucket":
            return None
        raise request_error("GET", bucket, key, exc, options) from exc
    except BotoCoreError as exc:
        raise request_error("GET", bucket, key, exc, options) from exc


def list_after(client: Any, bucket: str, prefix: str, start_after: str, options: StorageOptions) -> list[str]:
    """The keys under `prefix` that sort after `start_after` (a key), in order, every page read.

    S3's StartAfter is what keeps a refresh of a long Delta log one short LIST (pyarrow's listing
    has no such option: it lists the whole prefix).

    Raises:
        StorageUnavailable: the store did not answer.
        ConfigError: the store refused the credentials, or the bucket does not exist.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    keys: list[str] = []
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "StartAfter": start_after}
    try:
        while True:
            answer = client.list_objects_v2(**request)
            keys.extend(item["Key"] for item in answer.get("Contents", ()))
            if not answer.get("IsTruncated"):
                return keys
            request["ContinuationToken"] = answer["NextContinuationToken"]
    except ClientError as exc:
        raise request_error("LIST", bucket, prefix, exc, options) from exc
    except BotoCoreError as exc:
        raise request_error("LIST", bucket, prefix, exc, options) from exc


def request_error(method: str, bucket: str, key: str, exc: Exception, options: StorageOptions) -> LakesinkError:
    """One line naming the request and the answer; botocore's text carries no secret, but is scrubbed anyway."""
    from botocore.exceptions import ClientError

    target = f"{method} s3://{bucket}/{key}"
    if isinstance(exc, ClientError):
        status, code = _status(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        answer = redact(f"{status} {code}" + (f" ({message})" if message else ""), options)
        if code == "NoSuchBucket":
            return ConfigError(f"{target}: the bucket does not exist. Create it, or fix the table URI.")
        if code in _CREDENTIAL_CODES or status == 403:
            return ConfigError(f"{target}: the store refused the credentials ({answer}). Check AWS_* settings.")
        return StorageUnavailable(
            f"{target}: {answer}, after {retries} retries. The store is unreachable or failing: check the endpoint, rerun."
        )
    return StorageUnavailable(
        f"{target}: {redact(str(exc), options).rstrip('.')}. The store is unreachable or failing: check the endpoint, rerun."
    )


_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
)


def _status(exc: Any) -> tuple[int, str]:
    response = exc.response
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)), str(response.get("Error", {}).get("Code", ""))


def s3_client(options: StorageOptions) -> Any:
    """A boto3 S3 client with the endpoint, credentials, timeouts and retry budget delta-rs and pyarrow get."""
    import boto3
    from botocore.config import Config

    values = {k.upper(): v for k, v in options.values.items()}
    retry = options.retry_settings()
    endpoint = values.get("AWS_ENDPOINT_URL") or values.get("AWS_ENDPOINT")
    config: dict[str, Any] = {
        "region_name": values.get("AWS_REGION", "us-east-1"),
        "connect_timeout": parse_duration(retry["CONNECT_TIMEOUT"], what="CONNECT_TIMEOUT"),
        "read_timeout": parse_duration(retry["TIMEOUT"], what="TIMEOUT"),
        "retries": {"mode": "standard", "total_max_attempts": int(retry["MAX_RETRIES"]) + 1},
    }
    if endpoint and values.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() != "true":
        config["s3"] = {"addressing_style": "path"}  # as delta-rs and pyarrow address a custom endpoint
    credentials: dict[str, str] = {}
    if values.get("AWS_ACCESS_KEY_ID"):
        credentials["aws_access_key_id"] = values["AWS_ACCESS_KEY_ID"]
        credentials["aws_secret_access_key"] = values.get("AWS_SECRET_ACCESS_KEY", "")
        if values.get("AWS_SESSION_TOKEN"):
            credentials["aws_session_token"] = values["AWS_SESSION_TOKEN"]
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint or None, config=Config(**config), **credentials)


