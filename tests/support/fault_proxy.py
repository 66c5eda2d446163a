"""A small HTTP proxy on 127.0.0.1 in front of the moto S3 server that injects S3 faults.

Every request is forwarded to the server and its answer relayed back, byte for byte, over
HTTP/1.1 keep-alive connections. Faults are armed from the test process, each for a method (or
any), a regex searched in the request target (path and query) and a count, after letting `after`
matching requests through:

* `drop_response_after_apply`: the request reaches the server and is applied there, then the
  client is cut off unanswered (RST or FIN): the writer cannot tell whether its commit landed,
  which is exactly the "lost commit answer" case.
* `refuse`: the connection is reset (RST) before the request is forwarded; nothing is applied.
* `black_hole`: the request is read and never answered, nor forwarded: the connection stays open
  until the client gives up (its timeout) or the proxy stops.
* `fail_with` (and `slow_down` / `internal_error`): an S3 error answer (503 SlowDown, 500
  InternalError, 403 InvalidAccessKeyId, ...) instead of forwarding; nothing is applied.
* `kill_after_apply`: the request reaches the server and is applied there (a 2xx answer), then a
  given process (the `lakesink ingest` subprocess that sent it) is SIGKILLed before the answer is
  relayed: a crash point inside delta-rs ("the log PUT landed, the commit call has not returned",
  "the checkpoint file is written, `_last_checkpoint` is not").
* `add_latency`: the request is held for some seconds, then handled as usual (this one stacks
  with the others).

Every request is recorded (`events`), so a test can show what the client did next (retry the
PUT, get 412, read the log, ...).
"""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlparse

DELTA_LOG_ENTRY = r"/_delta_log/\d{20}\.json(?:\?|$)"
DELTA_LOG_ANY = r"_delta_log"  # log entries, checkpoints, and listings of the log (prefix=..._delta_log...)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class ProxyEvent:
    """One request the proxy saw: what the server answered and what the client got."""

    method: str
    path: str
    status: int | None  # the server's answer (None: never reached it)
    action: str  # "relayed", "dropped (reset|close)", "refused", "black-holed", "answered 503 SlowDown", ...
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds of injected latency before it was handled
    at: float = 0.0  # time.monotonic() when the request was read

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class _Fault:
    method: str | None
    pattern: re.Pattern[str]
    remaining: int
    after: int  # matching requests to let through before the fault starts
    # "reset" / "close": apply, then cut the client off; "refuse": cut it off unapplied; "blackhole":
    # never answer; "status": answer with an S3 error unapplied; "latency": wait, then go on as usual
    how: str
    then: Callable[[], None] | None = None  # called when the fault fires, before the client is cut off
    status: int = 0  # "status": the HTTP status and S3 error code to answer with
    code: str = ""
    seconds: float = 0.0  # "latency": how long to hold the request
    pid: int = 0  # "kill": the process to SIGKILL once the request is applied


class FaultProxy:
    """Start with `FaultProxy(upstream).start()`; point clients at `proxy.endpoint`."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        assert parsed.scheme == "http" and parsed.hostname and parsed.port, upstream
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self.events: list[ProxyEvent] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases black-holed connections
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_response_after_apply(
        self,
        pattern: str = DELTA_LOG_ENTRY,
        *,
        method: str = "PUT",
        times: int = 1,
        after: int = 0,
        how: str = "reset",
        then: Callable[[], None] | None = None,
    ) -> None:
        """After letting `after` matching requests through, let the next `times` reach the server and be
        applied, then cut the client off unanswered.

        `how` is "reset" (RST: the client sees "connection reset by peer") or "close" (a clean FIN
        before any byte of the answer: "connection closed before message completed").
        Patterns are searched in the request target (path and query). `then` runs when a drop
        fires, before the client is cut off (e.g. to make the store unreachable from then on).
        """
        assert how in ("reset", "close"), how
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(pattern), times, after, how, then))

    def kill_after_apply(self, pid: int, pattern: str = DELTA_LOG_ENTRY, *, method: str = "PUT", after: int = 0) -> None:
        """After letting `after` matching requests through, let the next one reach the server; once the
        server answered it with a 2xx (applied), SIGKILL `pid` and wait for it to die, then cut the
        connection without relaying the answer. A matching request the server refused (412, 404, ...)
        is relayed and does not count.
        """
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(pattern), 1, after, "kill", pid=pid))

    def refuse(self, pattern: str = DELTA_LOG_ANY, *, method: str | None = None, times: int = 1, after: int = 0) -> None:
        """Reset the next `times` matching requests (any method if None) without forwarding them: the
        store looks unreachable for them, and nothing is applied."""
        with self._lock:
            self._faults.append(_Fault(method.upper() if method else None, re.compile(pattern), times, after, "refuse"))

    def black_hole(self, pattern: str, *, method: str | None = None, times: int = 1, after: int = 0) -> None:
        """Read the next `times` matching requests and never answer or forward them: the client waits
        on an open connection until its own timeout fires (or the proxy stops)."""
        with self._lock:
            self._faults.append(_Fault(method.upper() if method else None, re.compile(pattern), times, after, "blackhole"))

    def fail_with(
        self, status: int, code: str, pattern: str, *, method: str | None = None, times: int = 1, after: int = 0
    ) -> None:
        """Answer the next `times` matching requests with an S3 error document (`status`, `<Code>code`)
        without forwarding them: nothing is applied."""
        with self._lock:
            self._faults.append(
                _Fault(method.upper() if method else None, re.compile(pattern), times, after, "status", status=status, code=code)
            )

    def slow_down(self, pattern: str, *, method: str | None = None, times: int = 1, after: int = 0) -> None:
        """`503 SlowDown` (S3's throttling answer) for the next `times` matching requests."""
        self.fail_with(503, "SlowDown", pattern, method=method, times=times, after=after)

    def internal_error(self, pattern: str, *, method: str | None = None, times: int = 1, after: int = 0) -> None:
        """`500 InternalError` for the next `times` matching requests."""
        self.fail_with(500, "InternalError", pattern, method=method, times=times, after=after)

    def add_latency(self, seconds: float, pattern: str = ".", *, method: str | None = None, times: int = 1_000_000) -> None:
        """Hold each of the next `times` matching requests for `seconds` before handling it (forwarding it,
        or applying another armed fault)."""
        with self._lock:
            self._faults.append(
                _Fault(method.upper() if method else None, re.compile(pattern), times, 0, "latency", seconds=seconds)
            )

    def armed(self) -> bool:
        """True while a fault (latency aside) has yet to fire."""
        with self._lock:
            return any(f.remaining > 0 for f in self._faults if f.how != "latency")

    def disarm(self) -> None:
        with self._lock:
            self._faults.clear()

    def matching(self, pattern: str = DELTA_LOG_ENTRY, *, method: str | None = None) -> list[ProxyEvent]:
        with self._lock:
            events = list(self.events)
        rx = re.compile(pattern)
        return [e for e in events if rx.search(e.path) and (method is None or e.method == method)]

    def _take_delay(self, method: str, target: str) -> float:
        delay = 0.0
        with self._lock:
            for fault in self._faults:
                matches = fault.remaining > 0 and fault.method in (None, method) and fault.pattern.search(target)
                if fault.how == "latency" and matches:
                    fault.remaining -= 1
                    delay += fault.seconds
        return delay

    def _take_fault(self, method: str, target: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.how == "latency":
                    continue
                if fault.remaining > 0 and fault.method in (None, method) and fault.pattern.search(target):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.remaining -= 1
                    return fault
        return None

    def _record(self, event: ProxyEvent) -> None:
        with self._lock:
            self.events.append(event)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        upstream: http.client.HTTPConnection | None = None
        try:
            while True:
                request_line = self.rfile.readline(65537)
                if not request_line or not request_line.strip():
                    return
                method, target, _version = request_line.decode("latin-1").split()
                read_at = time.monotonic()
                headers = self._read_headers()
                if any(k.lower() == "expect" and v.lower() == "100-continue" for k, v in headers):
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                body = self._read_body(headers)
                proxy = self.server.proxy
                delay = proxy._take_delay(method, target)
                if delay and proxy._stopping.wait(delay):
                    return
                fault = proxy._take_fault(method, target)
                drop = fault.how if fault is not None else None
                seen = ProxyEvent(method, target, None, "", tuple(headers), delay, read_at)

                if drop == "refuse":
                    proxy._record(replace(seen, status=None, action="refused"))
                    _reset(self.connection)
                    return
                if drop == "blackhole":
                    proxy._record(replace(seen, status=None, action="black-holed"))
                    self._hold_until_client_leaves()
                    return
                if fault is not None and drop == "status":
                    proxy._record(replace(seen, status=None, action=f"answered {fault.status} {fault.code}"))
                    reason = _REASONS.get(fault.status, "Error")
                    self._relay(method, fault.status, reason, _error_headers(), _error_body(fault.code, target))
                    continue
                if upstream is None:
                    upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    status, reason, answer_headers, answer = _forward(upstream, method, target, headers, body)
                except (OSError, http.client.HTTPException):
                    upstream.close()
                    upstream = None
                    proxy._record(replace(seen, status=None, action="upstream-failed"))
                    _reset(self.connection)
                    return
                if fault is not None and drop == "kill":
                    if status >= 300:
                        with proxy._lock:
                            fault.remaining += 1  # not applied: wait for one that is
                        proxy._record(replace(seen, status=status, action="relayed"))
                        self._relay(method, status, reason, answer_headers, answer)
                        continue
                    # Recorded first: the test may look as soon as the process is dead.
                    proxy._record(replace(seen, status=status, action=f"applied, then killed pid {fault.pid}"))
                    _sigkill_and_wait(fault.pid)
                    _reset(self.connection)
                    return
                if drop is not None:
                    # The server applied the request; the client never hears about it.
                    proxy._record(replace(seen, status=status, action=f"dropped ({drop})"))
                    if fault is not None and fault.then is not None:
                        fault.then()
                    if drop == "reset":
                        _reset(self.connection)
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                proxy._record(replace(seen, status=status, action="relayed"))
                self._relay(method, status, reason, answer_headers, answer)
                if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                    return
        except (OSError, ValueError):
            return
        finally:
            if upstream is not None:
                upstream.close()

    def _hold_until_client_leaves(self) -> None:
        """Answer nothing; return when the client closes its end or the proxy stops."""
        while not self.server.proxy._stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.1)
            if readable:
                try:
                    if not self.connection.recv(65536):
                        return  # the client gave up (its timeout fired)
                except OSError:
                    return

    def _read_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        while True:
            line = self.rfile.readline(65537).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                return headers
            key, _, value = line.partition(":")
            headers.append((key.strip(), value.strip()))

    def _read_body(self, headers: list[tuple[str, str]]) -> bytes:
        lowered = {k.lower(): v for k, v in headers}
        if "chunked" in lowered.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(lowered.get("content-length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self, method: str, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        out = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
        has_length = False
        for key, value in headers:
            lk = key.lower()
            if lk in _HOP_BY_HOP:
                continue
            if lk == "content-length":
                if method == "HEAD":
                    has_length = True
                    out.append(f"{key}: {value}\r\n".encode("latin-1"))
                continue
            out.append(f"{key}: {value}\r\n".encode("latin-1"))
        if not (method == "HEAD" and has_length) and not (status < 200 or status in (204, 304)):
            out.append(f"Content-Length: {len(body)}\r\n".encode("latin-1"))
        out.append(b"\r\n")
        self.wfile.write(b"".join(out) + (b"" if method == "HEAD" else body))
        self.wfile.flush()


def _forward(
    upstream: http.client.HTTPConnection, method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for key, value in headers:
        lk = key.lower()
        if lk in _HOP_BY_HOP or lk == "content-length":
            continue
        upstream.putheader(key, value)
    if body or method in ("PUT", "POST"):
        upstream.putheader("Content-Length", str(len(body)))
    upstream.endheaders(body if body else None)
    response = upstream.getresponse()
    answer = response.read()
    return response.status, response.reason, list(response.getheaders()), answer


_REASONS = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error", 503: "Slow Down"}
_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
}


def _error_headers() -> list[tuple[str, str]]:
    return [("Content-Type", "application/xml"), ("x-amz-request-id", "FAULTPROXY0000001")]


def _error_body(code: str, target: str) -> bytes:
    """An S3 error document, as AWS sends it (the SDKs and object_store read `<Code>`)."""
    resource = target.split("?", 1)[0]
    message = _MESSAGES.get(code, code)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
        "<RequestId>FAULTPROXY0000001</RequestId></Error>"
    ).encode()


def _sigkill_and_wait(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid` (a child of the test process) and return once it is dead (gone or a zombie)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.005)


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the client sees 'connection reset', not a clean end."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass
