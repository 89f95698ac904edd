"""Grafana dashboard (issue 5): structure, and every panel's query answered by a real Prometheus that
scrapes a real agent watching workloads this test starts.

End to end (root, cgroup v1 memory controller, eBPF, JDK 17, Debian's prometheus):
- two "containers": kubelet-shaped v1 memory cgroups (kubepods/burstable/pod<uid>/<64 hex id>), named
  by a fake API server (the only mock: no Kubernetes API server can run here) that serves a PodList
  in the recorded shape, reached by the agent's real pod metadata code over TLS;
- `leaky` (namespace e2e, container app): `agent_load leak 4096` (4 MiB/s of malloc'd, written memory);
  the agent flags the leak and arms its malloc profile (native sites); once Prometheus holds those,
  the test lowers the cgroup's limit to 24 MiB above the current usage and the kernel OOM-kills it
  within seconds (so a slow, loaded machine changes the timing, not the outcome);
- `jvm` (namespace e2e, container java): a JDK 17 JVM with NMT summary, -Xms128m -Xmx128m;
- `web` (container node): Node 20 holding ~32 MiB of objects, in a 1 GiB cgroup (V8 is sized for it);
- `worker` (container python): Debian's CPython 3.11 holding ~32 MiB of objects.
Then each dashboard query, with $namespace=e2e and All pods/containers, must return data over the
test's time range, and a few values are checked against what the test set up.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import PROGRAMS, build_c
from fixtures.k8s.fake_apiserver import FakeApiServer, FakeState, make_cert
from interpreters import Interp, node_interpreters, python_interpreters
from lineproc import LineProc
from test_deploy_rules import RULES, exported_metric_names

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "nativewatch.json"
PROMETHEUS = "/usr/bin/prometheus"
V1_MEMORY = Path("/sys/fs/cgroup/memory")
MIB = 1 << 20
TEMPLATE_VARS = ("namespace", "pod", "container")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """Panel queries, then annotation queries (the OOM kill markers)."""
    return ([(p["title"], t["expr"]) for p in panels() for t in p["targets"]]
            + [(f"annotation: {a['name']}", a["expr"]) for a in dashboard()["annotations"]["list"]])


def _interp(found: list[Interp], name: str) -> Interp:
    it = next((i for i in found if i.name == name), None)
    if it is None:
        pytest.fail(f"{name} is part of the machine (scripts/setup-test-node.sh for the Node builds)")
    return it


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


# -- structure -----------------------------------------------------------------------------------------

def test_dashboard_is_templated_by_namespace_pod_and_container():
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in TEMPLATE_VARS:
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["allValue"] == ".*"
        assert re.fullmatch(rf"label_values\(nativewatch_container_memory_bytes(\{{.*\}})?, {name}\)",
                            v["query"]["query"]), v["query"]
    # each variable narrows by the ones before it
    assert '$namespace' in variables["pod"]["query"]["query"]
    assert '$namespace' in variables["container"]["query"]["query"] and '$pod' in variables["container"]["query"]["query"]


def test_every_panel_has_queries_on_metrics_the_agent_exports():
    known = exported_metric_names()
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels():
        assert p["targets"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            names = {n for n in re.findall(r"nativewatch_[a-z0-9_]+", re.sub(r'"[^"]*"', "", t["expr"]))}
            assert names and names <= known, (p["title"], names - known)
            if any(n.startswith(("nativewatch_container", "nativewatch_process", "nativewatch_jvm",
                                 "nativewatch_native", "nativewatch_node", "nativewatch_python")) for n in names):
                for var in TEMPLATE_VARS:  # every workload panel follows the template variables
                    assert f'{var}=~"${var}"' in t["expr"], (p["title"], var)


def test_the_panels_an_on_call_needs_are_there():
    by_title = {p["title"].lower(): p for p in panels()}

    def find(*words: str) -> dict:
        hits = [p for t, p in by_title.items() if all(w in t for w in words)]
        assert len(hits) == 1, words
        return hits[0]

    rss = find("rss", "category")
    assert rss["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert "nativewatch_container_memory_bytes" in rss["targets"][0]["expr"]
    assert "nativewatch_container_memory_growth_bytes_per_second" in find("container growth", "category")["targets"][0]["expr"]
    assert "nativewatch_native_site_outstanding_bytes" in find("native", "sites")["targets"][0]["expr"]
    assert "dominant_category" in find("oom kills")["targets"][0]["expr"]
    assert "nativewatch_jvm_nmt_committed_bytes" in find("nmt")["targets"][0]["expr"]
    assert "limit" in find("time to oom")["targets"][0]["expr"]
    v8 = " ".join(t["expr"] for t in find("v8", "limit")["targets"])
    assert "nativewatch_node_v8_committed_bytes" in v8 and "nativewatch_node_heap_limit_bytes" in v8
    managed = " ".join(t["expr"] for t in find("python", "pymalloc")["targets"])
    assert 'runtime=~"node|python"' in managed and "nativewatch_python_pymalloc_arena_bytes" in managed


# -- end to end ----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=15) as r:
        return json.loads(r.read())


def _prom(port: int, path: str, **params: str) -> dict:
    doc = _get_json(f"http://127.0.0.1:{port}{path}?" + urllib.parse.urlencode(params, doseq=True))
    assert doc["status"] == "success", doc
    return doc["data"]


def _instant(port: int, query: str) -> list[dict]:
    return _prom(port, "/api/v1/query", query=query)["result"]


def _container_pod(template: dict, *, name: str, uid: str, container: str, cid: str, image: str) -> dict:
    """A Pod in the recorded shape (tests/fixtures/k8s), renamed and given this test's container id."""
    pod = copy.deepcopy(template)
    pod["metadata"].update({"name": name, "namespace": "e2e", "uid": uid})
    pod["metadata"].pop("managedFields", None)
    pod["metadata"].pop("ownerReferences", None)
    pod["metadata"].pop("generateName", None)
    pod["spec"]["containers"] = [dict(pod["spec"]["containers"][0], name=container, image=image)]
    pod["spec"].pop("initContainers", None)
    status = copy.deepcopy(pod["status"]["containerStatuses"][0])
    status.update({"name": container, "image": image, "containerID": f"containerd://{cid}", "lastState": {},
                   "restartCount": 0})
    pod["status"]["containerStatuses"] = [status]
    pod["status"].pop("initContainerStatuses", None)
    return pod


class KubeCgroup:
    """A v1 memory cgroup at the path a kubelet (cgroupfs driver) gives a container."""

    def __init__(self, limit: int) -> None:
        self.pod_uid = str(uuid.uuid4())
        self.id = uuid.uuid4().hex + uuid.uuid4().hex
        self.pod_dir = V1_MEMORY / "kubepods" / "burstable" / f"pod{self.pod_uid}"
        self.path = self.pod_dir / self.id
        self.path.mkdir(parents=True)
        (self.path / "memory.limit_in_bytes").write_text(str(limit))

    def set_limit(self, limit: int) -> None:
        (self.path / "memory.limit_in_bytes").write_text(str(limit))

    def usage(self) -> int:
        return int((self.path / "memory.usage_in_bytes").read_text())

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        raise AssertionError("no oom_kill counter in memory.oom_control")

    def remove(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for d in (self.path, self.pod_dir, self.pod_dir.parent, self.pod_dir.parent.parent):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still has tasks (just killed) or, for shared parents, other children
                    if d != self.path:
                        break
                    time.sleep(0.1)


@pytest.fixture
def e2e_env(tmp_path):
    if os.geteuid() != 0 or not (V1_MEMORY / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    if not os.path.exists(PROMETHEUS):
        pytest.skip("Debian's prometheus package is not installed")
    sys.path.insert(0, str(ROOT / "tests" / "java"))
    from harness import compile_programs, java_home

    if java_home(17) is None:
        pytest.skip("JDK 17 not installed")
    return {"classes": compile_programs(), "tmp": tmp_path}


@pytest.mark.slow
def test_every_dashboard_query_returns_data_from_a_real_agent_and_prometheus(e2e_env, bpf_available):
    from harness import Jvm, jvm_argv

    tmp = e2e_env["tmp"]
    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    leaky_cg, jvm_cg, web_cg, worker_cg = (KubeCgroup(1 << 30) for _ in range(4))
    # The fake API server's PodList: this node's two pods, shaped like the recorded fixture.
    state = FakeState()
    template = state.podlist["items"][1]
    state.podlist["items"] = [
        _container_pod(template, name="leaky-0", uid=leaky_cg.pod_uid, container="app", cid=leaky_cg.id,
                       image="registry.example.com/e2e/leaky:1"),
        _container_pod(template, name="ledger-0", uid=jvm_cg.pod_uid, container="java", cid=jvm_cg.id,
                       image="registry.example.com/e2e/ledger:1"),
        _container_pod(template, name="web-0", uid=web_cg.pod_uid, container="node", cid=web_cg.id,
                       image="registry.example.com/e2e/web:1"),
        _container_pod(template, name="worker-0", uid=worker_cg.pod_uid, container="python", cid=worker_cg.id,
                       image="registry.example.com/e2e/worker:1"),
    ]
    sa = tmp / "serviceaccount"
    sa.mkdir()
    cert, key = make_cert(tmp)
    (sa / "token").write_text(state.token)
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    server = FakeApiServer(state, tls=(cert, key)).__enter__()

    procs: list[subprocess.Popen] = []
    interps: list[LineProc] = []
    jvm = agent = prom = None
    aport, pport = _free_port(), _free_port()
    try:
        jvm = Jvm(jvm_argv(17, e2e_env["classes"], "-Xms128m", "-Xmx128m", "-XX:+UseG1GC",
                           "-XX:NativeMemoryTracking=summary"))
        jvm_cg.add(jvm.pid)
        jvm.step("heapleak 4")  # 4 MiB kept, 32 MiB of garbage: collections run, so there is a post-GC floor
        for cg, interp, script in ((web_cg, _interp(node_interpreters(), "node20"), "node_heap.js"),
                                   (worker_cg, _interp(python_interpreters(), "debian-3.11"), "py_heap.py")):
            run = " ".join(shlex.quote(a) for a in (*interp.argv, str(PROGRAMS / script)))
            interps.append(LineProc(["sh", "-c", f"echo $$ > {cg.path}/cgroup.procs && exec {run}"], env=interp.env))
            interps[-1].ask("objects 32")
        web, worker = interps
        (tmp / "agent.toml").write_text(
            "interval_s = 1\nfull_interval_s = 1\nnmt_interval_s = 2\nwindow_s = 20\nmin_leak_window_s = 8\n"
            f"auto_capture_min_growth_bytes = {8 * MIB}\nauto_capture_duration_s = 4\nhistory_interval_s = 5\n")
        env = dict(os.environ, KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(server.port),
                   NODE_NAME=state.node, NATIVEWATCH_K8S_SA_DIR=str(sa))
        exe = Path(sys.executable).parent / "nativewatch"
        (tmp / "prom.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{RULES}']\n"
            f"scrape_configs:\n  - job_name: nativewatch\n    static_configs:\n      - targets: ['127.0.0.1:{aport}']\n")
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prom.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{pport}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t_start = time.time()
        leak = subprocess.Popen([str(prog), "leak", "4096"], stdout=subprocess.PIPE, text=True,
                                preexec_fn=lambda: leaky_cg.add(os.getpid()))
        procs.append(leak)
        assert leak.stdout is not None and leak.stdout.readline().strip() == "ready"
        agent = subprocess.Popen([str(exe), "agent", "--listen", f"127.0.0.1:{aport}", "--config",
                                  str(tmp / "agent.toml"), "--state-dir", str(tmp / "state"),
                                  "--evidence-dir", str(tmp / "evidence"), "--track", str(leak.pid),
                                  "--track", str(jvm.pid), "--track", str(web.pid), "--track", str(worker.pid)],
                                 env=env, stderr=subprocess.PIPE, text=True)

        # Wait (the deadline only guards against a hang) until Prometheus holds the leak's native
        # sites and the JVM's NMT figures, then let the kernel OOM-kill the leak and wait for the kill.
        def wait_for_series(needed: dict[str, str], timeout_s: float) -> None:
            seen: set[str] = set()
            deadline = time.monotonic() + timeout_s
            while seen != set(needed) and time.monotonic() < deadline:
                time.sleep(2)
                if agent.poll() is not None:
                    raise AssertionError(f"agent exited: {agent.stderr.read() if agent.stderr else ''}")
                for name, q in needed.items():
                    if name not in seen and _instant(pport, f"max_over_time(({q})[5m:1s])"):
                        seen.add(name)
            assert seen == set(needed), f"never appeared in Prometheus: {set(needed) - seen}"

        wait_for_series({"sites": f'nativewatch_native_site_outstanding_bytes{{pid="{leak.pid}"}}',
                         "nmt": f'nativewatch_jvm_nmt_committed_bytes{{pid="{jvm.pid}"}}',
                         "v8": f'nativewatch_node_v8_committed_bytes{{pid="{web.pid}"}}',
                         "arenas": f'nativewatch_python_pymalloc_arena_bytes{{pid="{worker.pid}"}}'}, 240)
        assert leak.poll() is None
        leak_limit = (leaky_cg.usage() + 24 * MIB) // 4096 * 4096
        leaky_cg.set_limit(leak_limit)
        assert leak.wait(timeout=120) == -signal.SIGKILL
        assert leaky_cg.oom_kills() == 1  # ground truth: the kernel killed it
        wait_for_series({"oom": 'nativewatch_container_oom_kills_total{namespace="e2e"}'}, 120)
        time.sleep(3)  # a few more scrapes after the kill
        t_end = time.time()

        # Template variables resolve to this test's pods and containers.
        ns_values = _prom(pport, "/api/v1/label/namespace/values", **{"match[]": "nativewatch_container_memory_bytes"})
        assert "e2e" in ns_values
        pods = _prom(pport, "/api/v1/label/pod/values", **{"match[]": 'nativewatch_container_memory_bytes{namespace=~"e2e"}'})
        assert set(pods) == {"leaky-0", "ledger-0", "web-0", "worker-0"}
        containers = _prom(pport, "/api/v1/label/container/values",
                           **{"match[]": 'nativewatch_container_memory_bytes{namespace=~"e2e", pod=~".*"}'})
        assert set(containers) == {"app", "java", "node", "python"}

        # Every panel query over the test's time range, as Grafana would send it.
        values = {"namespace": "e2e", "pod": ".*", "container": ".*", "__rate_interval": "1m"}
        empty = []
        results: dict[str, list[dict]] = {}
        for title, expr in queries():
            data = _prom(pport, "/api/v1/query_range", query=substitute(expr, values), start=str(t_start),
                         end=str(t_end), step="2")
            results[expr] = data["result"]
            print(f"{title}: {len(data['result'])} series")
            if not data["result"]:
                empty.append(title)
        assert not empty, f"panels without data: {empty}"

        # Values against what the test set up.
        kills = _instant(pport, 'max_over_time(nativewatch_container_oom_kills_total{namespace="e2e"}[5m])')
        assert [(k["metric"]["pod"], k["metric"]["container"], k["metric"]["container_id"],
                 k["metric"]["dominant_category"], float(k["value"][1])) for k in kills] == [
            ("leaky-0", "app", leaky_cg.id, "native", 1.0)]
        heap = _instant(pport, f'max_over_time(nativewatch_jvm_nmt_committed_bytes{{pid="{jvm.pid}",'
                               'nmt_category=~"Java Heap|java_heap|heap"}[5m])')
        assert len(heap) == 1 and float(heap[0]["value"][1]) == 128 * MIB  # -Xms128m -Xmx128m
        assert heap[0]["metric"]["namespace"] == "e2e" and heap[0]["metric"]["container"] == "java"
        # the JVM's heap figures from hsperfdata: -Xmx and a post-GC floor inside it
        xmx = _instant(pport, f'max_over_time(nativewatch_jvm_heap_max_bytes{{pid="{jvm.pid}"}}[5m])')
        assert len(xmx) == 1 and float(xmx[0]["value"][1]) == 128 * MIB
        floor = _instant(pport, f'max_over_time(nativewatch_jvm_heap_post_gc_bytes{{pid="{jvm.pid}"}}[5m])')
        assert len(floor) == 1 and 4 * MIB <= float(floor[0]["value"][1]) <= 128 * MIB
        # Node's heap limit is V8's own (sized for the container's 1 GiB), CPython's arenas its own figure
        node_limit = _instant(pport, f'nativewatch_node_heap_limit_bytes{{pid="{web.pid}", namespace="e2e", '
                                     'pod="web-0", container="node"}')
        assert len(node_limit) == 1 and float(node_limit[0]["value"][1]) == web.ask("stats")["heap_size_limit"]
        assert float(node_limit[0]["value"][1]) < 1 << 30
        arenas = _instant(pport, f'nativewatch_python_pymalloc_arena_bytes{{pid="{worker.pid}", pod="worker-0"}}')
        assert len(arenas) == 1 and float(arenas[0]["value"][1]) == worker.ask("stats")["arena_bytes"]
        for pid, runtime in ((web.pid, "node"), (worker.pid, "python")):
            heap = _instant(pport, f'nativewatch_process_memory_bytes{{pid="{pid}", runtime="{runtime}", '
                                   'category="heap"}')
            assert len(heap) == 1 and float(heap[0]["value"][1]) >= 32 * MIB, (runtime, heap)
        native_peak = _instant(pport, 'max_over_time(nativewatch_container_memory_bytes{pod="leaky-0",'
                                      'category="native"}[5m])')
        assert len(native_peak) == 1 and 32 * MIB < float(native_peak[0]["value"][1]) <= leak_limit
        growth = _instant(pport, 'max_over_time(nativewatch_container_memory_growth_bytes_per_second{'
                                 'pod="leaky-0", category="native"}[5m])')
        print(f"leaky native peak {float(native_peak[0]['value'][1]) / MIB:.1f} MiB, "
              f"max growth {float(growth[0]['value'][1]) / MIB:.2f} MiB/s (truth 4), OOM kill after "
              f"{t_end - t_start:.0f} s of test")
        assert float(growth[0]["value"][1]) == pytest.approx(4 * MIB, rel=0.25)
        limit = _instant(pport, 'min_over_time(nativewatch_container_memory_limit_bytes{pod="leaky-0"}[5m])')
        assert float(limit[0]["value"][1]) == leak_limit
        # The rules file loads and evaluates in a real server.
        groups = _prom(pport, "/api/v1/rules")["groups"]
        assert {g["name"] for g in groups} == {"nativewatch.floor", "nativewatch.alerts", "nativewatch.jvm",
                                               "nativewatch.agent"}
        assert all(r["health"] in ("ok", "unknown") for g in groups for r in g["rules"]), groups
        # Kubernetes Events on the pod (the API server double validates each body): the leak verdict
        # and the OOM kill, with the triage's one-line explanation, on the pod's uid.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                e["reason"] == "NativeMemoryOOMKilled" for e in state.events.values()):
            time.sleep(0.5)
        assert state.rejected == [], state.rejected
        evs = {e["reason"]: e for e in state.events.values() if e["involvedObject"]["name"] == "leaky-0"}
        assert set(evs) >= {"NativeMemoryOOMKilled", "NativeMemoryLeak"}, list(state.events.values())
        oom = evs["NativeMemoryOOMKilled"]
        assert oom["involvedObject"]["uid"] == leaky_cg.pod_uid and oom["metadata"]["namespace"] == "e2e"
        assert oom["type"] == "Warning" and "native" in oom["message"] and "OOM-killed" in oom["message"]
        assert "native memory of container app grows" in evs["NativeMemoryLeak"]["message"]
        assert not any(e["involvedObject"]["name"] == "ledger-0" for e in state.events.values())
        # explain --pod: the pod's container ids from the API server, its process from the cgroups
        ex = subprocess.run([str(exe), "explain", "--pod", "e2e/ledger-0", "--duration", "3s", "--interval", "1s",
                             "--json", "--no-capture"], env=env, capture_output=True, text=True, timeout=120)
        assert ex.returncode == 0, ex.stderr
        doc = json.loads(ex.stdout)
        assert doc["pid"] == jvm.pid and doc["runtime"] == "jvm" and doc["managed_heap_limit_bytes"] == 128 * MIB
        gone = subprocess.run([str(exe), "explain", "--pod", "e2e/nope-0", "--duration", "3s"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert gone.returncode != 0 and "404" in gone.stderr and "Traceback" not in gone.stderr
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for lp in interps:
            lp.close()
        if jvm is not None:
            jvm.close()
        server.__exit__(None, None, None)
        for cg in (leaky_cg, jvm_cg, web_cg, worker_cg):
            cg.remove()
        shutil.rmtree(tmp / "tsdb", ignore_errors=True)
