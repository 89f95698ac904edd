"""The agent's HTTP endpoint: /metrics, /healthz, /api/v1/snapshot; optional TLS and basic auth.

Handlers only read the last published `AgentView` (never trigger a scan), so a slow or hostile client
costs one thread and no scan time. Threads are bounded: at most MAX_CLIENTS connections are served at
once (more are closed on accept and counted), and a connection that sends nothing for
CLIENT_TIMEOUT_S is dropped, so a crowd of stalled clients can neither stall the scan loop nor grow
the agent's threads and memory without end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from nativewatch.agent.config import AgentConfig, parse_listen
from nativewatch.agent.views import AgentView

__all__ = ["AgentHTTPServer", "serve", "check_basic_auth"]


def check_basic_auth(header: str | None, user: str, password_sha256: str) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    got_user, sep, got_pw = raw.partition(":")
    if not sep:
        return False
    digest = hashlib.sha256(got_pw.encode()).hexdigest()
    # Compare both parts in constant time and without short-circuiting on the user name.
    return hmac.compare_digest(got_user, user) & hmac.compare_digest(digest, password_sha256.lower())


MAX_CLIENTS = 32
CLIENT_TIMEOUT_S = 15.0


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], cfg: AgentConfig, registry: CollectorRegistry,
                 get_view: Callable[[], AgentView], *, max_clients: int = MAX_CLIENTS) -> None:
        self.cfg = cfg
        self.registry = registry
        self.get_view = get_view
        self.max_clients = max_clients
        self._slots = threading.BoundedSemaphore(max_clients)
        self.active = 0
        self.rejected_total = 0
        self._count_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with self._count_lock:
                self.rejected_total += 1
            self.shutdown_request(request)
            return
        with self._count_lock:
            self.active += 1
        try:
            super().process_request(request, client_address)
        except Exception:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._count_lock:
            self.active -= 1
        self._slots.release()

    def health(self) -> tuple[int, dict[str, Any]]:
        view = self.get_view()
        age = time.time() - view.time if view.scans_total else None
        stale_after = 3 * self.cfg.interval_s + 30
        healthy = age is not None and age <= stale_after
        # A runtime fault keeps the agent serving (200: a liveness probe must not restart it and lose
        # the evidence it keeps in memory) but says "degraded" with the reason.
        status = ("degraded" if view.faults else "ok") if healthy else ("starting" if age is None else "stale")
        return (200 if healthy else 503), {
            "status": status, "last_scan_age_s": age, "scans_total": view.scans_total,
            "faults": view.faults, "degraded": view.degraded, "notices": list(view.notices),
            "evidence_pending": view.evidence_pending, "errors_by_source": view.errors_by_source,
            "recent_errors": list(view.recent_errors)}


class _HttpCollector:
    """The endpoint's own load: connections being served and those refused for lack of a slot."""

    def __init__(self, server: AgentHTTPServer) -> None:
        self.server = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("nativewatch_agent_http_connections", "HTTP connections being served",
                                value=self.server.active)
        yield CounterMetricFamily("nativewatch_agent_http_rejected_connections",
                                  f"HTTP connections closed on accept: {self.server.max_clients} already served",
                                  value=self.server.rejected_total)


class _Handler(BaseHTTPRequestHandler):
    server: AgentHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT_S  # per socket operation: a stalled client is dropped, not waited for

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every few seconds would flood the log

    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        cfg = self.server.cfg
        if cfg.basic_auth_user is None or cfg.basic_auth_password_sha256 is None:
            return True
        if check_basic_auth(self.headers.get("Authorization"), cfg.basic_auth_user,
                            cfg.basic_auth_password_sha256):
            return True
        self._send(401, b"unauthorized\n", "text/plain", {"WWW-Authenticate": 'Basic realm="nativewatch"'})
        return False

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            code, doc = self.server.health()
            self._send(code, (json.dumps(doc) + "\n").encode(), "application/json")
        elif path == "/api/v1/snapshot":
            body = json.dumps(self.server.get_view().to_json(), separators=(",", ":")).encode()
            self._send(200, body, "application/json")
        elif path == "/":
            self._send(200, b"nativewatch agent: /metrics /healthz /api/v1/snapshot\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")


def serve(cfg: AgentConfig, registry: CollectorRegistry,
          get_view: Callable[[], AgentView]) -> tuple[AgentHTTPServer, threading.Thread]:
    """Bind (raises OSError if the address is taken), wrap in TLS if configured, serve in a thread."""
    host, port = parse_listen(cfg.listen)
    server = AgentHTTPServer((host, port), cfg, registry, get_view)
    registry.register(_HttpCollector(server))
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
        # The handshake runs on first read, in the request's own thread: a slow client cannot stall accept().
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="nativewatch-http", daemon=True)
    thread.start()
    return server, thread
