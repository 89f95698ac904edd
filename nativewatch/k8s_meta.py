"""Pod metadata for container labels: container id -> (namespace, pod, container) for this node's pods.

cgroups give a process's container *id* and pod UID; names come from Kubernetes. Two sources:

- the API server: list, then watch, pods with `fieldSelector=spec.nodeName=$NODE_NAME`, using the pod's
  service account token and CA (in cluster: KUBERNETES_SERVICE_HOST/PORT and
  /var/run/secrets/kubernetes.io/serviceaccount). RBAC cannot restrict a ClusterRole to one node's
  pods, so the node filter is applied here, on every request, and enforced server-side by the selector.
- the kubelet's `/pods` endpoint (a PodList of the node's pods), polled: for clusters that would
  rather grant `nodes/proxy` (or `nodes/pods`) than pod reads through the API server.

When neither answers, labels fall back to what cgroups know: the container id, with empty namespace,
pod and container (DESIGN.md: container labels are empty strings when unknown). A lookup never
blocks a scan: the watcher thread fills a `PodIndex` and scans read it.

Containers are indexed by every id Kubernetes reports for them: the running container
(`status.containerStatuses[].containerID`), the previous one (`lastState.terminated.containerID`,
which is the id an OOM-killed container had), init and ephemeral containers. Entries of deleted pods
are kept for `retain_s`, so an OOM kill that is reported after its pod is gone still gets names.

Parsing follows the project's rule for untrusted input: `parse_*` never raise on bad data; they
return what they could read plus a list of problems.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativewatch.model import ContainerInfo

__all__ = [
    "PodContainer", "PodListResult", "WatchEvent", "PodIndex", "Endpoint", "PodWatcher", "PodMetadata",
    "split_container_id", "parse_pod", "parse_pod_list", "parse_watch_event", "in_cluster_endpoint",
    "kubelet_endpoint", "cgroup_only_labels", "LABEL_NAMES", "ssl_context",
    "request_headers", "service_account_dir",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LABEL_NAMES: tuple[str, ...] = ("namespace", "pod", "container", "container_id")
_HEX = frozenset("0123456789abcdef")
_MAX_EVENT_BYTES = 16 * 1024 * 1024  # one watch event line; a Pod object is a few KiB


@dataclass(frozen=True, slots=True)
class PodContainer:
    namespace: str
    pod: str
    container: str
    pod_uid: str
    container_id: str  # bare id, as cgroups name it (64 hex for containerd, CRI-O, docker)
    runtime: str  # the scheme of Kubernetes' containerID: containerd | cri-o | docker | ...

    def labels(self) -> dict[str, str]:
        return {"namespace": self.namespace, "pod": self.pod, "container": self.container,
                "container_id": self.container_id}


@dataclass(frozen=True, slots=True)
class PodListResult:
    containers: tuple[PodContainer, ...]
    resource_version: str
    continue_token: str
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR | "" (unreadable)
    pod_uid: str = ""
    containers: tuple[PodContainer, ...] = ()
    resource_version: str = ""
    error_code: int | None = None  # ERROR events: the Status code (410: resourceVersion too old)
    problems: tuple[str, ...] = ()


def split_container_id(value: object) -> tuple[str, str] | None:
    """'containerd://<id>' -> ('containerd', '<id>'); None when it is not of that shape."""
    if not isinstance(value, str):
        return None
    runtime, sep, cid = value.partition("://")
    cid = cid.lower()
    if not sep or not runtime or not cid or len(cid) > 128 or not set(cid) <= _HEX:
        return None
    return runtime, cid


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _dict(obj: object, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _list(obj: object, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def parse_pod(pod: object) -> tuple[str, tuple[PodContainer, ...], tuple[str, ...]]:
    """A Pod object -> (pod uid, its containers under every id they had, problems)."""
    problems: list[str] = []
    if not isinstance(pod, dict):
        return "", (), ("pod is not an object",)
    meta = _dict(pod, "metadata")
    namespace, name, uid = _str(meta, "namespace"), _str(meta, "name"), _str(meta, "uid")
    if not name or not namespace:
        problems.append("pod without metadata.name/namespace")
    status = _dict(pod, "status")
    seen: dict[str, PodContainer] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in _list(status, key):
            if not isinstance(cs, dict):
                problems.append(f"{name}: {key} entry is not an object")
                continue
            cname = _str(cs, "name")
            ids = [cs.get("containerID"), _dict(_dict(cs, "lastState"), "terminated").get("containerID")]
            for raw in ids:
                if raw in (None, ""):
                    continue  # not started yet / no previous container: normal
                parsed = split_container_id(raw)
                if parsed is None:
                    problems.append(f"{name}/{cname}: unreadable containerID {str(raw)[:80]!r}")
                    continue
                runtime, cid = parsed
                seen.setdefault(cid, PodContainer(namespace=namespace, pod=name, container=cname,
                                                  pod_uid=uid, container_id=cid, runtime=runtime))
    return uid, tuple(seen.values()), tuple(problems)


def parse_pod_list(data: bytes) -> PodListResult:
    """A PodList response body (API server list or kubelet /pods)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return PodListResult((), "", "", (f"pod list is not JSON: {exc}",))
    if not isinstance(doc, dict):
        return PodListResult((), "", "", ("pod list is not an object",))
    problems: list[str] = []
    if doc.get("kind") not in ("PodList", None):
        problems.append(f"expected a PodList, got kind {str(doc.get('kind'))[:40]!r}")
    containers: list[PodContainer] = []
    for item in _list(doc, "items"):
        _uid, found, item_problems = parse_pod(item)
        containers.extend(found)
        problems.extend(item_problems)
    meta = _dict(doc, "metadata")
    return PodListResult(tuple(containers), _str(meta, "resourceVersion"), _str(meta, "continue"),
                         tuple(problems))


def parse_watch_event(line: bytes) -> WatchEvent:
    """One line of a watch stream: {"type": ..., "object": {...}}."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return WatchEvent("", problems=(f"watch event is not JSON: {exc}",))
    if not isinstance(doc, dict):
        return WatchEvent("", problems=("watch event is not an object",))
    etype = _str(doc, "type")
    obj = _dict(doc, "object")
    rv = _str(_dict(obj, "metadata"), "resourceVersion")
    if etype == "ERROR":
        code = obj.get("code")
        return WatchEvent("ERROR", resource_version=rv,
                          error_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                          problems=(f"watch error: {_str(obj, 'message')[:200]}",))
    if etype == "BOOKMARK":
        return WatchEvent("BOOKMARK", resource_version=rv)
    if etype not in ("ADDED", "MODIFIED", "DELETED"):
        return WatchEvent("", problems=(f"unknown watch event type {etype[:40]!r}",))
    uid, containers, problems = parse_pod(obj)
    if not uid:
        problems = (*problems, "watch event pod without metadata.uid")
    return WatchEvent(etype, pod_uid=uid, containers=containers, resource_version=rv, problems=problems)


class PodIndex:
    """container id -> PodContainer, updated by one watcher thread, read by scans (thread-safe)."""

    def __init__(self, *, retain_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, PodContainer] = {}
        self._by_pod: dict[str, set[str]] = {}
        self._expires: dict[str, float] = {}  # container ids of deleted pods -> when to forget them
        self._retain_s = retain_s
        self._clock = clock

    def replace_all(self, containers: Iterable[PodContainer]) -> None:
        """A fresh full list: it is the truth, except that ids that vanished are retained a while."""
        fresh = {c.container_id: c for c in containers}
        with self._lock:
            now = self._clock()
            for cid in set(self._by_id) - set(fresh):
                self._expires.setdefault(cid, now + self._retain_s)
            for cid in fresh:
                self._expires.pop(cid, None)
            self._by_id.update(fresh)
            self._by_pod = {}
            for c in self._by_id.values():
                self._by_pod.setdefault(c.pod_uid, set()).add(c.container_id)
            self._purge(now)

    def apply(self, event: WatchEvent) -> None:
        if event.type not in ("ADDED", "MODIFIED", "DELETED") or not event.pod_uid:
            return
        with self._lock:
            now = self._clock()
            if event.type == "DELETED":
                for cid in self._by_pod.get(event.pod_uid, set()) | {c.container_id for c in event.containers}:
                    if cid in self._by_id:
                        self._expires.setdefault(cid, now + self._retain_s)
            else:
                ids = self._by_pod.setdefault(event.pod_uid, set())
                for c in event.containers:
                    self._by_id[c.container_id] = c
                    self._expires.pop(c.container_id, None)
                    ids.add(c.container_id)
                # An id the pod no longer reports (a restart's older container) is retained, not dropped.
                current = {c.container_id for c in event.containers}
                for cid in ids - current:
                    self._expires.setdefault(cid, now + self._retain_s)
            self._purge(now)

    def _purge(self, now: float) -> None:
        for cid, deadline in list(self._expires.items()):
            if deadline <= now:
                del self._expires[cid]
                gone = self._by_id.pop(cid, None)
                if gone is not None:
                    ids = self._by_pod.get(gone.pod_uid)
                    if ids is not None:
                        ids.discard(cid)
                        if not ids:
                            del self._by_pod[gone.pod_uid]

    def lookup(self, container_id: str) -> PodContainer | None:
        with self._lock:
            return self._by_id.get(container_id.lower())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)


def cgroup_only_labels(info: ContainerInfo | None) -> dict[str, str]:
    return {"namespace": "", "pod": "", "container": "", "container_id": info.id if info else ""}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where pod metadata comes from and how to authenticate."""

    kind: str  # "apiserver" | "kubelet"
    base_url: str  # https://10.96.0.1:443, https://127.0.0.1:10250, http://127.0.0.1:10255
    node_name: str
    token_path: Path | None = None  # re-read on every request: projected tokens rotate
    ca_path: Path | None = None
    insecure_skip_verify: bool = False  # kubelet serving certs are often self-signed; never for apiserver

    def pods_url(self, **params: str) -> str:
        if self.kind == "kubelet":
            return self.base_url.rstrip("/") + "/pods"
        query = {"fieldSelector": f"spec.nodeName={self.node_name}", **params}
        return self.base_url.rstrip("/") + "/api/v1/pods?" + urllib.parse.urlencode(query)


def service_account_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the service account token and CA are read: $NATIVEWATCH_K8S_SA_DIR, else the pod's mount."""
    env = os.environ if env is None else env
    return Path(env.get("NATIVEWATCH_K8S_SA_DIR") or SERVICE_ACCOUNT_DIR)


def request_headers(endpoint: Endpoint, user_agent: str = "nativewatch-agent") -> dict[str, str]:
    """JSON request headers with the bearer token, re-read on every call (projected tokens rotate)."""
    headers = {"Accept": "application/json", "User-Agent": user_agent}
    if endpoint.token_path is not None:
        headers["Authorization"] = f"Bearer {endpoint.token_path.read_text().strip()}"
    return headers


def in_cluster_endpoint(env: Mapping[str, str] | None = None,
                        sa_dir: Path | None = None) -> tuple[Endpoint | None, str]:
    """The API server as seen from a pod, or (None, why not). `sa_dir`: service_account_dir(env)."""
    env = os.environ if env is None else env
    sa_dir = service_account_dir(env) if sa_dir is None else sa_dir
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    node = env.get("NODE_NAME", "")
    if not host or not port:
        return None, "not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset)"
    if not node:
        return None, "NODE_NAME unset: set it from the downward API (spec.nodeName)"
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    if not token.exists():
        return None, f"no service account token at {token}"
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Endpoint("apiserver", f"https://{hostport}", node, token_path=token,
                    ca_path=ca if ca.exists() else None), ""


def kubelet_endpoint(url: str, node_name: str = "", *, token_path: Path | None = None,
                     ca_path: Path | None = None, insecure_skip_verify: bool = False) -> Endpoint:
    return Endpoint("kubelet", url, node_name, token_path=token_path, ca_path=ca_path,
                    insecure_skip_verify=insecure_skip_verify)


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    """TLS for an endpoint: its CA (or the system's), certificate checks off only when asked (kubelet)."""
    if not endpoint.base_url.startswith("https"):
        return None
    if endpoint.insecure_skip_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(endpoint.ca_path) if endpoint.ca_path else None)


class _Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410 / ERROR 410): list again."""


class PodWatcher:
    """Keeps a `PodIndex` in step with the node's pods; run() is the loop of one background thread."""

    def __init__(self, endpoint: Endpoint, index: PodIndex, *, timeout_s: float = 10.0,
                 watch_timeout_s: int = 300, poll_interval_s: float = 30.0,
                 backoff_s: tuple[float, float] = (1.0, 60.0)) -> None:
        self.endpoint = endpoint
        self.index = index
        self.timeout_s = timeout_s
        self.watch_timeout_s = watch_timeout_s
        self.poll_interval_s = poll_interval_s
        self.backoff_s = backoff_s
        self.synced = threading.Event()  # set after the first successful list
        self.last_error = ""
        self.errors_total = 0
        self.problems_total = 0
        self.lists_total = 0
        self.events_total = 0
        self._stop = threading.Event()
        self._ssl = ssl_context(endpoint)

    def _open(self, url: str, timeout: float):  # -> http.client.HTTPResponse
        req = urllib.request.Request(url, headers=request_headers(self.endpoint))
        try:
            return urllib.request.urlopen(req, timeout=timeout, context=self._ssl)
        except urllib.error.HTTPError as exc:
            if exc.code == 410:
                raise _Gone() from exc
            raise

    def _count_problems(self, problems: tuple[str, ...]) -> None:
        if problems:
            self.problems_total += len(problems)
            log.debug("pod metadata: %s", "; ".join(problems[:5]))

    def list_once(self) -> str:
        """One full list (all pages); replaces the index; returns the list's resourceVersion."""
        containers: list[PodContainer] = []
        token, rv = "", ""
        while True:
            params = {"limit": "500"}
            if token:
                params["continue"] = token
            with self._open(self.endpoint.pods_url(**params), self.timeout_s) as resp:
                result = parse_pod_list(resp.read())
            if result.problems and not result.containers and not result.resource_version:
                raise ValueError("; ".join(result.problems))
            self._count_problems(result.problems)
            containers.extend(result.containers)
            rv = result.resource_version or rv
            token = result.continue_token if self.endpoint.kind == "apiserver" else ""
            if not token:
                break
        self.index.replace_all(containers)
        self.lists_total += 1
        self.synced.set()
        return rv

    def watch_once(self, resource_version: str) -> str:
        """Follow one watch request until the server ends it; returns the last resourceVersion seen."""
        url = self.endpoint.pods_url(watch="true", resourceVersion=resource_version,
                                     allowWatchBookmarks="true", timeoutSeconds=str(self.watch_timeout_s))
        # The socket timeout must outlast the server's own watch timeout and the bookmark period.
        with self._open(url, self.watch_timeout_s + self.timeout_s) as resp:
            while not self._stop.is_set():
                line = resp.readline(_MAX_EVENT_BYTES)
                if not line:
                    break
                if not line.strip():
                    continue
                event = parse_watch_event(line)
                self.events_total += 1
                if event.type == "ERROR":
                    if event.error_code == 410:
                        raise _Gone()
                    raise ValueError(event.problems[0] if event.problems else "watch error")
                self._count_problems(event.problems)
                self.index.apply(event)
                resource_version = event.resource_version or resource_version
        return resource_version

    def run(self) -> None:
        delay = self.backoff_s[0]
        rv = ""
        while not self._stop.is_set():
            try:
                if self.endpoint.kind == "kubelet":
                    self.list_once()
                    self._stop.wait(self.poll_interval_s)
                    continue
                if not rv:
                    rv = self.list_once()
                rv = self.watch_once(rv)
                delay = self.backoff_s[0]
            except _Gone:
                rv = ""  # too old: the next round lists afresh
            except (OSError, ValueError, urllib.error.URLError) as exc:
                self.errors_total += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("pod metadata from %s failed (%s); retrying in %.0fs",
                            self.endpoint.base_url, self.last_error, delay)
                rv = ""
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])

    def stop(self) -> None:
        self._stop.set()


@dataclass
class PodMetadata:
    """What the agent holds: labels for a container, from the index when a source works, else cgroups."""

    watcher: PodWatcher | None = None
    why_not: str = ""
    index: PodIndex = field(default_factory=PodIndex)
    _thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, *, kubelet_url: str | None = None,
                         sa_dir: Path | None = None, kubelet_insecure: bool = False,
                         **watcher_kw: Any) -> PodMetadata:
        """API server when running in a pod; the kubelet when a URL is given; else cgroup-only.

        NATIVEWATCH_KUBELET_URL selects the kubelet; NATIVEWATCH_K8S_SA_DIR overrides where the service
        account token and CA are read (default: the pod's mounted service account)."""
        env = os.environ if env is None else env
        if sa_dir is None:
            sa_dir = service_account_dir(env)
        kubelet_url = kubelet_url or env.get("NATIVEWATCH_KUBELET_URL") or None
        index = PodIndex()
        if kubelet_url:
            token = sa_dir / "token"
            ca = sa_dir / "ca.crt"
            ep = kubelet_endpoint(kubelet_url, env.get("NODE_NAME", ""),
                                  token_path=token if token.exists() else None,
                                  ca_path=ca if ca.exists() and not kubelet_insecure else None,
                                  insecure_skip_verify=kubelet_insecure)
            return cls(PodWatcher(ep, index, **watcher_kw), index=index)
        ep_api, why = in_cluster_endpoint(env, sa_dir)
        if ep_api is None:
            return cls(None, why_not=why, index=index)
        return cls(PodWatcher(ep_api, index, **watcher_kw), index=index)

    def start(self) -> None:
        if self.watcher is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self.watcher.run, name="nativewatch-k8s-meta", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def source(self) -> str:
        """'apiserver' / 'kubelet' once a list succeeded, else 'cgroup-only'."""
        if self.watcher is not None and self.watcher.synced.is_set():
            return self.watcher.endpoint.kind
        return "cgroup-only"

    def lookup(self, info: ContainerInfo | None) -> PodContainer | None:
        if info is None or not info.id:
            return None
        return self.index.lookup(info.id)

    def labels(self, info: ContainerInfo | None) -> dict[str, str]:
        found = self.lookup(info)
        return found.labels() if found is not None else cgroup_only_labels(info)
