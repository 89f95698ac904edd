"""Kubernetes Events (issue 14, part 3) against the API server test double (tests/fixtures/k8s), the one
mock of the suite: it validates Event bodies the way the real API server's required fields do, and
speaks the real request and response shapes (201 on create, strategic-merge PATCH, 404, 401)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "k8s"))
from fake_apiserver import FakeApiServer, FakeState  # noqa: E402

from nativewatch.k8s_events import BURST, DEDUP_S, MAX_MESSAGE, REFILL_S, EventRecorder, PodRef  # noqa: E402
from nativewatch.k8s_meta import Endpoint  # noqa: E402

POD = PodRef("shop", "leaky-0", "5e1f0c7a-0000-4000-8000-000000000001")


class Clock:
    def __init__(self) -> None:
        self.t = 1_796_000_000.0

    def __call__(self) -> float:
        return self.t


def recorder(server: FakeApiServer, tmp_path: Path, clock: Clock, token: str = "test-token") -> EventRecorder:
    tok = tmp_path / "token"
    tok.write_text(token + "\n")
    return EventRecorder(Endpoint("apiserver", server.url, "worker-1", token_path=tok), clock=clock)


def test_an_event_is_created_then_deduplicated_like_kubelets(tmp_path):
    clock = Clock()
    with FakeApiServer(FakeState()) as server:
        rec = recorder(server, tmp_path, clock)
        msg = "pid 42 (native): off-heap growth: native grows 2.0 MiB/s, mostly at leak_grow (app)"
        assert rec.record(POD, "NativeMemoryOOMKilled", msg) == "created"
        clock.t += 60
        assert rec.record(POD, "NativeMemoryOOMKilled", msg) == "patched"
        clock.t += 60
        assert rec.record(POD, "NativeMemoryOOMKilled", msg) == "patched"
        assert server.state.rejected == []
        (ns, name), ev = next(iter(server.state.events.items()))
        assert ns == "shop" and name.startswith("leaky-0.") and len(server.state.events) == 1
        assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "leaky-0",
                                        "uid": POD.uid}
        assert ev["reason"] == "NativeMemoryOOMKilled" and ev["type"] == "Warning" and ev["message"] == msg
        assert ev["count"] == 3 and ev["firstTimestamp"] != ev["lastTimestamp"]
        assert ev["source"] == {"component": "nativewatch", "host": "worker-1"}
        kinds = [(m, ct) for m, _, ct in server.state.event_requests]
        assert kinds == [("POST", "application/json"), ("PATCH", "application/strategic-merge-patch+json"),
                         ("PATCH", "application/strategic-merge-patch+json")]
        # another message is another event; the same one after the dedup window too
        assert rec.record(POD, "NativeMemoryLeak", "native grows 1 MiB/s") == "created"
        clock.t += DEDUP_S + 1
        assert rec.record(POD, "NativeMemoryOOMKilled", msg) == "created"
        assert len(server.state.events) == 3


def test_a_flood_is_rate_limited_per_pod_and_refills(tmp_path):
    clock = Clock()
    with FakeApiServer(FakeState()) as server:
        rec = recorder(server, tmp_path, clock)
        results = [rec.record(POD, "NativeMemoryLeak", f"leak #{i}") for i in range(BURST + 5)]
        assert results.count("created") == BURST and results.count("rate-limited") == 5
        other = PodRef("shop", "other-0", "uid-2")
        assert rec.record(other, "NativeMemoryLeak", "leak") == "created"  # per object
        clock.t += REFILL_S
        assert rec.record(POD, "NativeMemoryLeak", "leak after refill") == "created"
        assert rec.record(POD, "NativeMemoryLeak", "and again") == "rate-limited"
        assert rec.rate_limited == 6 and len(server.state.events) == BURST + 2


def test_long_messages_are_truncated_and_errors_are_counted_not_raised(tmp_path):
    clock = Clock()
    with FakeApiServer(FakeState()) as server:
        rec = recorder(server, tmp_path, clock)
        assert rec.record(POD, "NativeMemoryLeak", "x" * 5000) == "created"
        assert len(next(iter(server.state.events.values()))["message"]) == MAX_MESSAGE
        bad = recorder(server, tmp_path / "..", clock, token="wrong")
        assert bad.record(POD, "NativeMemoryLeak", "y").startswith("error: HTTP 401") and bad.errors == 1
    dead = EventRecorder(Endpoint("apiserver", "http://127.0.0.1:9", "worker-1"), clock=clock, timeout_s=1)
    assert dead.record(POD, "NativeMemoryLeak", "z").startswith("error:") and dead.last_error


def test_queued_events_go_out_on_the_background_thread(tmp_path):
    clock = Clock()
    with FakeApiServer(FakeState()) as server:
        rec = recorder(server, tmp_path, clock)
        rec.start()
        try:
            for i in range(3):
                rec.post(POD, "NativeMemoryLeak", f"m{i}")
            rec.flush()
        finally:
            rec.stop()
        assert rec.created == 3 and len(server.state.events) == 3
