"""Pod metadata for container labels (issue 5): parsers over recorded-shaped API responses, the index,
and the watcher against a fake API server / kubelet on 127.0.0.1.

The fake server (tests/fixtures/k8s/fake_apiserver.py) is the only mock here: no Kubernetes API
server can run on the test machines. Everything else (HTTP, TLS, the agent-side code) is real.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import kubernetes_validate
import pytest
from fixtures.k8s.fake_apiserver import EXPIRED, PODLIST, WATCH, FakeApiServer, FakeState, make_cert
from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.k8s_meta import (
    PodIndex,
    PodMetadata,
    parse_pod_list,
    parse_watch_event,
    split_container_id,
)
from nativewatch.model import ContainerInfo


def cid(name: str) -> str:
    """Fixture container ids are sha256(name) (see tests/fixtures/k8s/README.md)."""
    return hashlib.sha256(name.encode()).hexdigest()


def info(container_id: str) -> ContainerInfo:
    return ContainerInfo(id=container_id, runtime="containerd", pod_uid=None, cgroup="/kubepods/x")


def wait_for(cond, what: str, timeout_s: float = 20.0) -> None:
    """Poll a condition (background thread progress); the deadline is a hang guard, not a measurement."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- fixtures are real API shapes ----------------------------------------------------------------------

def test_fixture_pods_validate_against_the_kubernetes_schema_strictly():
    pods = [dict(item, kind="Pod", apiVersion="v1") for item in json.loads(PODLIST.read_text())["items"]]
    for line in WATCH.read_text().splitlines():
        event = json.loads(line)
        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
            pods.append(event["object"])
    assert len(pods) == 7
    for pod in pods:
        kubernetes_validate.validate(pod, "1.32", strict=True)
    # The validator has no schema for Status; check the fields the watcher reads.
    status = json.loads(EXPIRED.read_text())["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


# -- parsers -------------------------------------------------------------------------------------------

def test_split_container_id_accepts_runtime_schemes_and_rejects_garbage():
    assert split_container_id("containerd://" + "A" * 64) == ("containerd", "a" * 64)
    assert split_container_id("cri-o://" + "0" * 64) == ("cri-o", "0" * 64)
    for bad in ("", "containerd://", "containerd://xyz", "://" + "0" * 64, "0" * 64, None, 5,
                "docker://" + "0" * 200):
        assert split_container_id(bad) is None


def test_pod_list_maps_every_container_id_to_namespace_pod_container():
    result = parse_pod_list(PODLIST.read_bytes())
    assert result.problems == ()
    assert result.resource_version == "48412"
    got = {c.container_id: (c.namespace, c.pod, c.container, c.runtime) for c in result.containers}
    assert got == {
        cid("checkout-app"): ("shop", "checkout-7d9f6c5b8d-x2v7q", "app", "containerd"),
        cid("checkout-envoy"): ("shop", "checkout-7d9f6c5b8d-x2v7q", "envoy", "containerd"),
        cid("checkout-migrate"): ("shop", "checkout-7d9f6c5b8d-x2v7q", "migrate", "containerd"),
        # the running JVM and the one that was OOM-killed before it (lastState.terminated)
        cid("ledger-java-2"): ("payments", "ledger-0", "java", "containerd"),
        cid("ledger-java-1"): ("payments", "ledger-0", "java", "containerd"),
    }
    # the Pending pod has no container id yet: nothing to map, and that is not a problem
    assert all(c.pod != "report-29391840-kq8zt" for c in result.containers)
    assert {c.pod_uid for c in result.containers if c.pod == "ledger-0"} == {"9c8b7a6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"}


def test_watch_events_parse_with_types_resource_versions_and_new_ids():
    events = [parse_watch_event(line) for line in WATCH.read_bytes().splitlines()]
    assert [e.type for e in events] == ["ADDED", "MODIFIED", "BOOKMARK", "MODIFIED", "DELETED"]
    assert [e.resource_version for e in events] == ["48420", "48431", "48502", "48517", "48530"]
    assert events[0].containers == ()
    assert [c.container_id for c in events[1].containers] == [cid("cart-cart-1")]
    assert {c.container_id for c in events[3].containers} == {cid("ledger-java-3"), cid("ledger-java-2")}
    assert all(e.problems == () for e in events)
    expired = parse_watch_event(EXPIRED.read_bytes())
    assert (expired.type, expired.error_code) == ("ERROR", 410)


def test_unreadable_container_id_is_a_problem_not_an_exception():
    doc = json.loads(PODLIST.read_text())
    doc["items"][0]["status"]["containerStatuses"][0]["containerID"] = "containerd://not-hex"
    result = parse_pod_list(json.dumps(doc).encode())
    assert any("unreadable containerID" in p for p in result.problems)
    assert cid("checkout-app") not in {c.container_id for c in result.containers}
    assert cid("checkout-envoy") in {c.container_id for c in result.containers}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["kind", "items", "metadata", "status", "containerStatuses", "containerID", "name",
                         "namespace", "uid", "type", "object", "lastState", "terminated", "code", "x"]),
        children, max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parsers_never_raise_on_any_json(value):
    data = json.dumps(value).encode()
    parse_pod_list(data)
    parse_watch_event(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_never_raise_on_any_bytes(data):
    parse_pod_list(data)
    parse_watch_event(data)


# -- index ---------------------------------------------------------------------------------------------

def test_index_follows_watch_events_and_retains_gone_ids_for_late_oom_reports():
    now = [1000.0]
    index = PodIndex(retain_s=600, clock=lambda: now[0])
    index.replace_all(parse_pod_list(PODLIST.read_bytes()).containers)
    assert index.lookup(cid("checkout-app")).container == "app"
    assert index.lookup(cid("CART-CART-1".lower())) is None
    for line in WATCH.read_bytes().splitlines():
        index.apply(parse_watch_event(line))
    assert index.lookup(cid("cart-cart-1")).pod == "cart-5c7b9d8f4-mh2lp"
    assert index.lookup(cid("ledger-java-3")).pod == "ledger-0"
    # ledger-java-1 is no longer reported by the pod, but an OOM report about it may still come
    assert index.lookup(cid("ledger-java-1")).pod == "ledger-0"
    now[0] += 601
    index.apply(parse_watch_event(WATCH.read_bytes().splitlines()[1]))  # any event purges
    assert index.lookup(cid("ledger-java-1")) is None
    assert index.lookup(cid("ledger-java-2")).container == "java"  # still in lastState
    # a deleted pod's containers are kept for the retention time, then forgotten
    ledger = json.loads(WATCH.read_bytes().splitlines()[3])
    ledger["type"] = "DELETED"
    index.apply(parse_watch_event(json.dumps(ledger).encode()))
    assert index.lookup(cid("ledger-java-3")) is not None
    now[0] += 601
    index.replace_all([])
    assert index.lookup(cid("ledger-java-3")) is None
    assert index.lookup(cid("checkout-app")) is not None  # dropped from the list: retained a while
    now[0] += 601
    index.replace_all([])
    assert len(index) == 0


# -- the watcher against the fake API server ----------------------------------------------------------

@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


def service_account(tmp_path: Path, ca: Path | None, token: str = "test-token") -> Path:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token + "\n")
    if ca is not None:
        (sa / "ca.crt").write_bytes(ca.read_bytes())
    return sa


def env_for(server: FakeApiServer, node: str = "worker-1") -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port),
            "NODE_NAME": node}


def test_api_server_list_then_watch_over_tls_with_node_field_selector(tmp_path, tls_cert):
    with FakeApiServer(tls=tls_cert) as server:
        meta = PodMetadata.from_environment(env_for(server), sa_dir=service_account(tmp_path, tls_cert[0]),
                                            backoff_s=(0.05, 0.2))
        assert meta.source == "cgroup-only"  # nothing listed yet
        meta.start()
        try:
            # list (2 pages) -> watch with events -> watch answered 410 -> list again -> idle watch
            wait_for(lambda: meta.watcher.lists_total >= 2 and server.state.watches >= 3, "relist after 410")
            assert meta.source == "apiserver"
            assert meta.labels(info(cid("cart-cart-1"))) == {
                "namespace": "shop", "pod": "cart-5c7b9d8f4-mh2lp", "container": "cart",
                "container_id": cid("cart-cart-1")}
            assert meta.labels(info(cid("ledger-java-3")))["pod"] == "ledger-0"
            assert meta.labels(info(cid("checkout-envoy")))["container"] == "envoy"
            unknown = "f" * 64
            assert meta.labels(info(unknown)) == {"namespace": "", "pod": "", "container": "",
                                                  "container_id": unknown}
        finally:
            meta.stop()
    reqs = server.state.requests
    assert server.state.rejected == []
    assert all(r.query.get("fieldSelector") == "spec.nodeName=worker-1" for r in reqs)
    assert all(r.authorization == "Bearer test-token" for r in reqs)
    lists = [r for r in reqs if "watch" not in r.query]
    watches = [r for r in reqs if r.query.get("watch") == "true"]
    assert [r.query.get("continue") for r in lists[:2]] == [None, "2"]  # pagination followed
    assert watches[0].query["resourceVersion"] == "48412"  # from the list
    assert watches[1].query["resourceVersion"] == "48530"  # last event of the first watch
    assert watches[0].query["allowWatchBookmarks"] == "true"


def test_untrusted_certificate_is_refused_and_labels_fall_back(tmp_path, tls_cert):
    other = make_cert(tmp_path)  # a CA that did not sign the server's certificate
    with FakeApiServer(tls=tls_cert) as server:
        meta = PodMetadata.from_environment(env_for(server), sa_dir=service_account(tmp_path, other[0]),
                                            backoff_s=(0.05, 0.2))
        meta.start()
        try:
            wait_for(lambda: meta.watcher.errors_total >= 1, "a failed attempt")
            assert "CERTIFICATE_VERIFY_FAILED" in meta.watcher.last_error
            assert meta.source == "cgroup-only"
            assert meta.labels(info(cid("checkout-app")))["pod"] == ""
        finally:
            meta.stop()
    assert server.state.requests == []  # no request (and no token) went to an unverified server


def test_wrong_token_is_an_error_not_labels(tmp_path, tls_cert):
    with FakeApiServer(tls=tls_cert) as server:
        meta = PodMetadata.from_environment(
            env_for(server), sa_dir=service_account(tmp_path, tls_cert[0], token="stale"), backoff_s=(0.05, 0.2))
        meta.start()
        try:
            wait_for(lambda: meta.watcher.errors_total >= 1, "a 401")
            assert "401" in meta.watcher.last_error
            assert meta.source == "cgroup-only"
        finally:
            meta.stop()


def test_kubelet_pods_endpoint_is_polled(tmp_path):
    with FakeApiServer(FakeState(kubelet=True)) as server:
        meta = PodMetadata.from_environment({"NODE_NAME": "worker-1"}, kubelet_url=server.url,
                                            sa_dir=service_account(tmp_path, None), poll_interval_s=0.05)
        meta.start()
        try:
            wait_for(lambda: meta.watcher.lists_total >= 2, "two polls")
            assert meta.source == "kubelet"
            assert meta.labels(info(cid("ledger-java-1"))) == {
                "namespace": "payments", "pod": "ledger-0", "container": "java",
                "container_id": cid("ledger-java-1")}
        finally:
            meta.stop()
    assert {r.path for r in server.state.requests} == {"/pods"}


def test_outside_a_cluster_labels_are_cgroup_only(tmp_path):
    meta = PodMetadata.from_environment({}, sa_dir=tmp_path / "none")
    assert meta.watcher is None
    assert "KUBERNETES_SERVICE_HOST" in meta.why_not
    meta.start()  # no-op
    assert meta.source == "cgroup-only"
    assert meta.labels(info("a" * 64)) == {"namespace": "", "pod": "", "container": "", "container_id": "a" * 64}
    assert meta.labels(None) == {"namespace": "", "pod": "", "container": "", "container_id": ""}
    meta.stop()


def test_environment_selects_service_account_dir_and_kubelet(tmp_path):
    """How a process without the pod's default mounts (the agent under test) is pointed at a source."""
    sa = service_account(tmp_path, None)
    meta = PodMetadata.from_environment({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                                         "NODE_NAME": "worker-1", "NATIVEWATCH_K8S_SA_DIR": str(sa)})
    assert meta.watcher is not None and meta.watcher.endpoint.token_path == sa / "token"
    assert meta.watcher.endpoint.base_url == "https://10.96.0.1:443"
    meta = PodMetadata.from_environment({"NODE_NAME": "worker-1", "NATIVEWATCH_K8S_SA_DIR": str(sa),
                                         "NATIVEWATCH_KUBELET_URL": "http://127.0.0.1:10255"})
    assert meta.watcher.endpoint.kind == "kubelet" and meta.watcher.endpoint.pods_url() == "http://127.0.0.1:10255/pods"


def test_missing_node_name_is_reported(tmp_path):
    meta = PodMetadata.from_environment({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"},
                                        sa_dir=service_account(tmp_path, None))
    assert meta.watcher is None and "NODE_NAME" in meta.why_not


def test_unreachable_api_server_falls_back_and_keeps_retrying(tmp_path, tls_cert):
    # A port that was just free: nothing listens there, so connections are refused.
    with FakeApiServer() as probe:
        port = probe.port
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port), "NODE_NAME": "worker-1"}
    meta = PodMetadata.from_environment(env, sa_dir=service_account(tmp_path, tls_cert[0]), backoff_s=(0.02, 0.05))
    meta.start()
    try:
        wait_for(lambda: meta.watcher.errors_total >= 3, "three failed attempts")
        assert "refused" in meta.watcher.last_error.lower()
        assert meta.source == "cgroup-only"
        assert meta.labels(info("b" * 64))["container_id"] == "b" * 64
    finally:
        meta.stop()
