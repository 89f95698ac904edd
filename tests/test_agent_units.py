"""Agent pieces that need no workload: config, /proc/PID/stat parsing, evidence files, the history store,
exporter isolation, HTTP auth/TLS, and the `evidence` CLI (issue 6)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import GaugeMetricFamily

from nativewatch.agent.config import AgentConfig, ConfigError, load_config, parse_listen
from nativewatch.agent.evidence import (
    dominant_category,
    evidence_id,
    list_evidence,
    load_evidence,
    write_evidence,
)
from nativewatch.agent.exporter import SOURCES, AgentCollector, make_registry
from nativewatch.agent.http import check_basic_auth, serve
from nativewatch.agent.store import HistoryStore
from nativewatch.agent.views import AgentView, ContainerLabels, ProcessView
from nativewatch.growth import fit_floor, leak_verdict
from nativewatch.model import CATEGORIES, Breakdown, ContainerInfo, empty_categories
from nativewatch.sources.procstat import parse_stat

MIB = 1 << 20


# --- config ---------------------------------------------------------------------------------------
def test_config_file_then_overrides(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text('[agent]\ninterval_s = 5\nlisten = "127.0.0.1:9999"\ntrack = [1, 2]\nstate_dir = "/x"\n')
    cfg = load_config(f, interval_s=2.0, listen=None)
    assert cfg.interval_s == 2.0
    assert cfg.listen == "127.0.0.1:9999"
    assert cfg.track == (1, 2)
    assert cfg.state_dir == Path("/x")
    assert cfg.policy.long_min_window_s == cfg.window_s / 4
    assert cfg.policy.fast_windows_s == (120.0, 300.0)


@pytest.mark.parametrize("text,msg", [
    ("bogus = 1\n", "unknown config keys"),
    ('listen = "nope"\n', "HOST:PORT"),
    ('listen = "0.0.0.0:80"\nloopback_only = true\n', "not loopback"),
    ('tls_cert = "/c"\n', "go together"),
    ("interval_s = 0\n", "positive"),
    ("interval_s = [\n", "cannot read config"),
])
def test_config_rejects_bad_settings(tmp_path, text, msg):
    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(f)


def test_listen_parsing():
    assert parse_listen("127.0.0.1:9847") == ("127.0.0.1", 9847)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":80") == ("0.0.0.0", 80)
    load_config(None, listen="[::1]:80", loopback_only=True)


# --- /proc/PID/stat -------------------------------------------------------------------------------
def test_parse_stat_of_a_real_process_matches_status():
    st_ = parse_stat(Path(f"/proc/{os.getpid()}/stat").read_bytes())
    assert st_ is not None and st_.pid == os.getpid()
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
    assert st_.threads == threads
    assert not st_.kernel_thread
    kthread = parse_stat(Path("/proc/2/stat").read_bytes())  # kthreadd
    assert kthread is not None and kthread.kernel_thread and kthread.rss_bytes == 0


def test_parse_stat_comm_with_spaces_and_parens():
    line = b"42 (a) b (c) R 1 42 42 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 3 0 777 1000 25 18446744073709551615 0"
    st_ = parse_stat(line)
    assert st_ is not None
    assert (st_.comm, st_.ppid, st_.threads, st_.starttime, st_.rss_bytes) == ("a) b (c", 1, 3, 777, 25 * 4096)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_stat_never_raises(data):
    parse_stat(data)


# --- evidence -------------------------------------------------------------------------------------
def _cats(**kw: int) -> dict[str, int]:
    c = empty_categories()
    c.update(kw)
    return c


def test_dominant_category_is_the_one_that_grew_most_else_the_largest():
    hist = [_cats(heap=500, native=10), _cats(heap=400, native=90), _cats(heap=520, native=200)]
    assert dominant_category(hist, hist[-1]) == "native"
    flat = [_cats(heap=500, file=100), _cats(heap=400, file=100)]
    assert dominant_category(flat, flat[-1]) == "heap"
    assert dominant_category([], _cats(file=3)) == "file"
    assert dominant_category([], None) is None


def test_evidence_round_trip_and_listing(tmp_path):
    doc = {"id": evidence_id("oom", 1_700_000_000.0, 42), "kind": "oom", "time": 1_700_000_000.0, "pid": 42,
           "comm": "x", "dominant_category": "native"}
    p1 = write_evidence(tmp_path, doc)
    p2 = write_evidence(tmp_path, doc)  # same second, same pid: a distinct id, not an overwrite
    assert p1 != p2 and p1.exists() and p2.exists()
    (tmp_path / "junk.json").write_text("{not json")
    items, problems = list_evidence(tmp_path)
    assert [i.id for i in items] == [p1.stem, p2.stem]
    assert len(problems) == 1 and "junk.json" in problems[0]
    assert load_evidence(tmp_path, p2.stem)["pid"] == 42
    with pytest.raises(ValueError):
        load_evidence(tmp_path, "../../etc/passwd")
    with pytest.raises(FileNotFoundError):
        load_evidence(tmp_path, "oom-20000101T000000-1")


def test_evidence_cli_lists_and_shows(tmp_path, nativewatch_cli):
    doc = {"id": evidence_id("oom", 1_700_000_000.0, 7), "kind": "oom", "time": 1_700_000_000.0, "pid": 7,
           "comm": "leaker", "dominant_category": "native",
           "last_breakdown": {"rss_bytes": 64 * MIB, "categories": _cats(native=60 * MIB, file=4 * MIB)},
           "growth": {"native": {"bytes_per_second": 2 * MIB, "leak": True}},
           "top_stacks": [{"frames": ["leak_grow (app)", "main (app)"], "bytes": 50 * MIB, "samples": 200}]}
    path = write_evidence(tmp_path, doc)
    ls = nativewatch_cli("evidence", "ls", "--evidence-dir", str(tmp_path), "--json")
    assert ls.returncode == 0, ls.stderr
    assert [e["id"] for e in json.loads(ls.stdout)["evidence"]] == [path.stem]
    show = nativewatch_cli("evidence", "show", path.stem, "--evidence-dir", str(tmp_path))
    assert show.returncode == 0, show.stderr
    assert "dominant category: native" in show.stdout
    assert "leak_grow (app)" in show.stdout and "LEAK" in show.stdout
    hostile = write_evidence(tmp_path, {**doc, "comm": "evil\x1b[2J", "top_stacks": [
        {"frames": ["f\x1b]0;pwned\x07 (app)"], "bytes": MIB}]})
    for args in (("ls",), ("show", hostile.stem)):
        out = nativewatch_cli("evidence", *args, "--evidence-dir", str(tmp_path))
        assert out.returncode == 0 and "\x1b" not in out.stdout and "\\x1b" in out.stdout, out.stdout
    missing = nativewatch_cli("evidence", "show", "oom-20000101T000000-1", "--evidence-dir", str(tmp_path))
    assert missing.returncode == 1 and "no evidence" in missing.stderr


# --- history store --------------------------------------------------------------------------------
def test_store_keeps_history_and_prunes_past_retention(tmp_path):
    store = HistoryStore(tmp_path, retention_s=100)
    doc = {"pid": 5, "comm": "c", "rss_bytes": 10, "container": None, "categories": _cats(native=10)}
    store.add_processes(1000.0, [doc])
    store.add_processes(1090.0, [{**doc, "rss_bytes": 20}])
    store.add_containers(1090.0, [{"id": "abc"}])
    assert [d["rss_bytes"] for _, d in store.process_history(5)] == [10, 20]
    assert store.latest_processes()[0]["rss_bytes"] == 20
    assert store.prune(1150.0) == 1  # the row at 1000 is older than 1150 - 100
    assert store.count("process_samples") == 1
    assert store.prune(1160.0) == 0  # pruning runs at most once a minute
    ro = HistoryStore(tmp_path, retention_s=100, readonly=True)
    assert ro.count("container_samples") == 1
    ro.close()
    store.close()


# --- exporter -------------------------------------------------------------------------------------
def _view() -> AgentView:
    cats = _cats(native=30 * MIB, file=5 * MIB)
    bd = Breakdown(pid=77, comm="app", runtime="native", rss_bytes=35 * MIB, categories=cats, threads=1,
                   sources=["smaps"], container=ContainerInfo("c" * 64, "containerd", None, "/x"))
    ts = [float(i) for i in range(60)]
    growth = {c: leak_verdict(fit_floor(ts, [MIB * i if c == "native" else 0 for i in range(60)]),
                              min_slope_bytes_per_second=1, min_window_s=30) for c in CATEGORIES}
    pv = ProcessView(bd, ContainerLabels(container_id="c" * 64), growth, False, 35 * MIB)
    return AgentView(time=1.0, scans_total=3, processes=(pv,),
                     oom_kills={("", "", "", "c" * 64, "native"): 2},
                     sites={77: [{"frames": ["f", "g"], "outstanding_bytes": 4 * MIB}]},
                     errors_by_source={"smaps": 1}, bpf_stats={"page_faults": {"sampled": 9, "map_full": 1}})


def test_exporter_series_carry_the_view_values():
    reg = make_registry(_view)
    lbl = {"pid": "77", "comm": "app", "runtime": "native", "namespace": "", "pod": "", "container": "",
           "container_id": "c" * 64}
    assert reg.get_sample_value("nativewatch_process_memory_bytes", {**lbl, "category": "native"}) == 30 * MIB
    assert reg.get_sample_value("nativewatch_process_memory_growth_bytes_per_second",
                                {**lbl, "category": "native"}) == pytest.approx(MIB)
    assert reg.get_sample_value("nativewatch_container_oom_kills_total",
                                {"namespace": "", "pod": "", "container": "", "container_id": "c" * 64,
                                 "dominant_category": "native"}) == 2
    assert reg.get_sample_value("nativewatch_native_site_outstanding_bytes", {**lbl, "site": "f;g"}) == 4 * MIB
    assert reg.get_sample_value("nativewatch_agent_bpf_lost_total",
                                {"program": "page_faults", "reason": "map_full"}) == 1
    assert reg.get_sample_value("nativewatch_scrape_source_success", {"source": "process"}) == 1
    own = Path(f"/proc/{os.getpid()}/statm").read_text().split()
    rss = reg.get_sample_value("nativewatch_agent_process_resident_memory_bytes")
    assert rss == pytest.approx(int(own[1]) * os.sysconf("SC_PAGE_SIZE"), rel=0.05)


def test_dump_bpf_prints_the_final_programs(nativewatch_cli):
    out = nativewatch_cli("agent", "--dump-bpf")
    assert out.returncode == 0, out.stderr
    assert "#define SAMPLE_EVERY 64" in out.stdout and "RAW_TRACEPOINT_PROBE(page_fault_user)" in out.stdout
    assert "TRACEPOINT_PROBE(oom, mark_victim)" in out.stdout


def test_a_failing_source_loses_only_its_own_series():
    def broken(view):
        yield GaugeMetricFamily("nativewatch_partial", "never emitted", value=1)
        raise RuntimeError("boom")

    from prometheus_client.registry import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(_view, sources={**SOURCES, "broken": broken}))
    assert reg.get_sample_value("nativewatch_scrape_source_success", {"source": "broken"}) == 0
    assert reg.get_sample_value("nativewatch_partial") is None
    assert reg.get_sample_value("nativewatch_scrape_source_success", {"source": "process"}) == 1
    assert reg.get_sample_value("nativewatch_build_info", {"version": "0.1.0"}) == 1


# --- HTTP -----------------------------------------------------------------------------------------
def test_basic_auth_check():
    h = hashlib.sha256(b"s3cret").hexdigest()
    good = "Basic " + base64.b64encode(b"prom:s3cret").decode()
    assert check_basic_auth(good, "prom", h)
    assert not check_basic_auth("Basic " + base64.b64encode(b"prom:nope").decode(), "prom", h)
    assert not check_basic_auth("Basic !!!", "prom", h)
    assert not check_basic_auth(None, "prom", h)


def test_https_with_basic_auth_serves_metrics_and_snapshot(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    cfg = AgentConfig(listen="127.0.0.1:0", tls_cert=cert, tls_key=key, basic_auth_user="prom",
                      basic_auth_password_sha256=hashlib.sha256(b"pw").hexdigest()).validate()
    holder = {"view": _view()}  # time=1.0: a scan from long ago
    server, thread = serve(cfg, make_registry(lambda: holder["view"]), lambda: holder["view"])
    try:
        port = server.server_address[1]
        ctx = ssl.create_default_context(cafile=str(cert))
        auth = {"Authorization": "Basic " + base64.b64encode(b"prom:pw").decode()}

        def get(path, headers):
            req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert get("/metrics", {})[0] == 401
        status, body = get("/metrics", auth)
        assert status == 200 and b"nativewatch_process_memory_bytes{" in body
        status, body = get("/api/v1/snapshot", auth)
        doc = json.loads(body)
        assert doc["processes"][0]["pid"] == 77
        assert doc["processes"][0]["growth"]["native"]["leak"] is True
        assert set(doc["processes"][0]["growth"]) == set(CATEGORIES)
        status, body = get("/healthz", auth)
        assert status == 503 and json.loads(body)["status"] == "stale"
        holder["view"] = dataclasses.replace(holder["view"], time=time.time())
        status, body = get("/healthz", auth)
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- scan cadence and caps (on this machine's real processes) ---------------------------------------
def test_cpu_budget_defers_full_attribution_but_tracked_pids_always_get_it(tmp_path):
    import subprocess as sp

    from nativewatch.agent.loop import Agent

    keep = sp.Popen(["sleep", "60"])
    try:
        cfg = load_config(None, scan_budget_s=0.0, full_interval_s=3600, track=(keep.pid,), top_k=2,
                          state_dir=tmp_path, evidence_dir=tmp_path / "ev", bpf=False, auto_capture=False)
        agent = Agent(cfg)
        try:
            for _ in range(3):
                before = agent.full_total
                view = agent.scan_once()
                # A zero budget: the tracked pid plus one other process per scan, the rest deferred.
                assert 1 <= agent.full_total - before <= 2
            assert agent.deferred_total > 0
            pids = [p.breakdown.pid for p in view.processes]
            # The cap: top_k=2 by RSS among those with a breakdown, plus the tracked pid.
            assert keep.pid in pids and len(pids) == 3
            others = sorted((r for r in agent.procs.values() if r.last is not None and r.pid != keep.pid),
                            key=lambda r: -r.rss_bytes)
            assert set(pids) - {keep.pid} == {r.pid for r in others[:2]}
        finally:
            agent.close()
    finally:
        keep.kill()
        keep.wait()
