"""`nativewatch explain --pid PID | --container ID [--duration 60s] [--json]`: the OOMKill triage as a
command. Samples the process's breakdown for --duration (the growth policy of `soak`: the user chose the
window), a JVM's hsperfdata a few times a second for its post-GC floor and GC time (no attach for
those), and, unless --no-capture, runs a sampled allocation capture under the overhead budget beside it,
so growing native memory comes with the code that holds it. The decision itself is triage.explain.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from typing import Any

import click

from nativewatch.clickutil import DURATION, fail, pid_errors
from nativewatch.errors import AccessDenied, NativewatchError, ProcessGone, SourceUnavailable
from nativewatch.growth import GrowthPolicy
from nativewatch.jvm.gcstats import (
    GcSample,
    floor_trend,
    gc_sample,
    gc_time_ratio,
    max_heap_bytes,
    post_gc_floor,
)
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.runtimes.registry import runtime_named
from nativewatch.soak import run_soak, soak_policy
from nativewatch.sources.procfs import list_pids
from nativewatch.sources.procstat import read_stat
from nativewatch.tracker import Tracker, memory_facts
from nativewatch.triage import MIN_WINDOW_S, Explanation, TriageInput, explain
from nativewatch.units import human_bytes

# Below this a category does not count as growing over a minutes-long window: ~1.4 GB a day, above a
# warmed-up JVM's JIT and metaspace drift, below any leak that OOM-kills a pod within days.
MIN_SLOPE_BYTES_PER_SECOND = 16 * 1024.0
GC_POLL_S = 0.2
_GO_SIZE = re.compile(r"^(\d+)(B|KiB|MiB|GiB|TiB)?$")
_GO_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def gomemlimit(environ: bytes) -> int | None:
    """GOMEMLIMIT from a process environment (NUL-separated), None when unset, 'off' or malformed."""
    for item in environ.split(b"\0"):
        if item.startswith(b"GOMEMLIMIT="):
            m = _GO_SIZE.match(item[11:].decode("ascii", "replace").strip())
            if m:
                return int(m.group(1)) * _GO_UNITS[m.group(2)]
            return None
    return None


class _GcPoller:
    """The sleep between breakdown samples, spent reading hsperfdata every GC_POLL_S."""

    def __init__(self, pid: int, proc_root: str, enabled: bool) -> None:
        self.pid, self.proc_root, self.enabled = pid, proc_root, enabled
        self.samples: list[GcSample] = []
        self.limit: int | None = None
        self.stop = threading.Event()

    def poll(self) -> None:
        from nativewatch.jvm.hsperf import read_hsperfdata

        try:
            pd = read_hsperfdata(self.pid, self.proc_root)
        except (OSError, ProcessGone, AccessDenied):
            pd = None
        if pd is None:
            return
        s = gc_sample(pd, time.monotonic())
        if s is not None:
            self.samples.append(s)
        if self.limit is None:
            self.limit = max_heap_bytes(pd)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            if self.enabled:
                self.poll()
            left = end - time.monotonic()
            if left <= 0 or self.stop.wait(min(GC_POLL_S, left)):
                return


class _WindowEnded(ProcessGone):
    """Ends the sampling loop early (Ctrl-C): the window so far is explained."""


class _Capture:
    """A sampled allocation capture beside the sampling, under the overhead budget."""

    def __init__(self, pid: int, duration_s: float, proc_root: str, max_overhead: float | None,
                 jvm_attach: bool) -> None:
        self.stop = threading.Event()
        self.result: Any = None
        self.problem: str | None = None
        self._thread = threading.Thread(target=self._run, args=(pid, duration_s, proc_root, max_overhead, jvm_attach),
                                        daemon=True)
        self._thread.start()

    def _run(self, pid: int, duration_s: float, proc_root: str, max_overhead: float | None, jvm_attach: bool) -> None:
        try:
            from nativewatch.malloc_profile.runner import run_profile

            self.result = run_profile(pid, duration_s, stop=self.stop, proc_root=proc_root, max_overhead=max_overhead,
                                      jvm_attach=jvm_attach)
        except (SourceUnavailable, ProcessGone, AccessDenied, ImportError, ValueError, OSError) as exc:
            self.problem = f"no allocation capture: {exc}"

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(60)


def _largest_per_container(proc_root: str) -> dict[str, tuple[int, int]]:
    """Container id -> (RSS, pid) of its largest process, from one pass over the processes' cgroups."""
    from nativewatch.sources.cgroup_identity import container_identity, read_proc_cgroup

    out: dict[str, tuple[int, int]] = {}
    for pid in list_pids(proc_root):
        try:
            info = container_identity(read_proc_cgroup(pid, proc_root))
            st = read_stat(pid, proc_root) if info is not None else None
        except (OSError, ProcessGone, AccessDenied, ValueError):
            continue
        if info is not None and st is not None and (st.rss_bytes, pid) > out.get(info.id, (-1, 0)):
            out[info.id] = (st.rss_bytes, pid)
    return out


def _container_pid(container_id: str, proc_root: str) -> int:
    """The container's largest process (by RSS) whose cgroup names this container id (a prefix will do)."""
    want = container_id.strip().lower()
    if len(want) < 6 or not re.fullmatch(r"[0-9a-f]+", want):
        raise click.BadParameter("a container id is at least 6 hex digits", param_hint="--container")
    found = [v for cid, v in _largest_per_container(proc_root).items() if cid.startswith(want)]
    if not found:
        raise click.UsageError(f"no process of container {container_id} found")
    return max(found)[1]


def _pod_pid(ref: str, proc_root: str) -> int:
    """The largest local process of pod NAMESPACE/NAME: the pod's container ids come from the API
    server (the in-cluster service account: run it in the agent's pod), the processes from cgroups."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from nativewatch.k8s_meta import in_cluster_endpoint, parse_pod, request_headers, ssl_context

    ns, _, name = ref.partition("/")
    if not ns or not name or "/" in name:
        raise click.BadParameter("expected NAMESPACE/NAME", param_hint="--pod")
    endpoint, why = in_cluster_endpoint()
    if endpoint is None:
        raise click.UsageError(f"--pod needs the Kubernetes API ({why}); on the node, use --container")
    url = (f"{endpoint.base_url.rstrip('/')}/api/v1/namespaces/{urllib.parse.quote(ns, safe='')}/pods/"
           f"{urllib.parse.quote(name, safe='')}")
    try:
        req = urllib.request.Request(url, headers=request_headers(endpoint, "nativewatch-explain"))
        with urllib.request.urlopen(req, timeout=10,
                                    context=ssl_context(endpoint)) as resp:
            pod = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise click.UsageError(f"pod {ref}: the API server answered {exc.code}"
                               + (" (no such pod)" if exc.code == 404 else "")) from None
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"pod {ref}: cannot ask the API server: {exc}") from None
    _uid, containers, _problems = parse_pod(pod)
    local = _largest_per_container(proc_root)
    found = [local[c.container_id] for c in containers if c.container_id in local]
    if not found:
        raise click.UsageError(f"pod {ref} has no running process on this node")
    return max(found)[1]


def _container_memory(bd: Breakdown, proc_root: str) -> tuple[int | None, int | None]:
    if bd.container is None:
        return None, None
    try:
        from nativewatch.sources.cgroup_memory import read_container_memory

        facts = memory_facts(read_container_memory(bd.pid, proc_root=proc_root))
        return facts.working_set_bytes, facts.limit_bytes
    except (NativewatchError, OSError):  # CgroupGone, ProcessGone, SourceUnavailable: no container figures
        return None, None


def run_explain(pid: int, duration_s: float, interval_s: float, *, proc_root: str = "/proc", capture: bool = True,
                max_overhead: float | None = 0.05, attach: bool = True,
                stop: threading.Event | None = None, agent_url: str | None = None) -> dict[str, Any]:
    """Watch pid for duration_s and explain it; returns the JSON document. Growth comes from the node
    agent at `agent_url` when it watches pid over a longer window than this one, else from the
    sampling. Raises ProcessGone or AccessDenied when the process cannot be read at all."""
    from nativewatch.snapshot import SnapshotSampler

    snap = SnapshotSampler(pid, proc_root, attach, 5.0)
    first = snap()  # raises ProcessGone / AccessDenied for the caller

    def sampler() -> Breakdown:
        if stop is not None and stop.is_set():
            raise _WindowEnded(pid)
        return snap()

    gc = _GcPoller(pid, proc_root, first.runtime == "jvm")
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), gc.stop.set()), daemon=True).start()
    cap = _Capture(pid, duration_s, proc_root, max_overhead, attach) if capture else None
    t_start = time.time()
    try:
        samples, last, problems, elapsed = run_soak(sampler, duration_s=duration_s, interval_s=interval_s,
                                                    sleep=gc.sleep)
    finally:
        if cap is not None:
            cap.finish()
    last = last or first
    tracker = Tracker(soak_policy(MIN_SLOPE_BYTES_PER_SECOND, GrowthPolicy()), max_points=len(samples) + 1)
    for s in samples:
        tracker.observe("p", s.t_s, s.rss_bytes, s.categories)
    growth = tracker.category_growth("p")
    problems = list(problems) + list(snap.notes)
    window = samples[-1].t_s - samples[0].t_s if len(samples) > 1 else 0.0
    n_samples, min_window = len(samples), MIN_WINDOW_S
    source: dict[str, Any] = {"from": "sampled", "window_s": round(window, 3)}
    if agent_url:
        from nativewatch.agent_history import agent_history

        hist = agent_history(pid, last.comm, agent_url)
        if hist is not None and hist.window_s > window:
            # the agent's verdicts already embody its policy's windows: any of them that exists counts
            growth, window, n_samples, min_window = hist.growth, hist.window_s, hist.samples, 0.0
            source = {"from": "agent", "url": hist.url, "window_s": round(hist.window_s, 3)}
    limit: int | None = None
    if last.runtime == "jvm":
        limit = gc.limit
        if not gc.samples:
            problems.append("no hsperfdata (-XX:-UsePerfData, or /tmp not shared): no post-GC floor or GC time")
    elif last.runtime == "go":
        try:
            with open(f"{proc_root}/{pid}/environ", "rb") as f:
                limit = gomemlimit(f.read())
        except OSError as exc:
            problems.append(f"environment unreadable ({exc.strerror}): GOMEMLIMIT unknown")
    else:
        limit = runtime_named(last.runtime).heap_limit(last.runtime_details)
    trend = floor_trend(post_gc_floor(gc.samples)) if gc.samples else None
    ratio = gc_time_ratio(gc.samples) if gc.samples else None
    sites: list[dict[str, Any]] = []
    capture_doc: dict[str, Any] | None = None
    if cap is not None:
        if cap.result is not None:
            r = cap.result
            sites = [s.to_json() for s in r.sites[:10] if s.outstanding_bytes > 0]
            capture_doc = {"via": r.via, "duration_s": round(r.duration_s, 3),
                           "stopped": r.stopped_early, "sampling_interval_bytes": r.sampling_interval_bytes}
            if r.stopped_early:
                problems.append(f"allocation capture {r.stopped_early}: its sites cover only that part")
        elif cap.problem:
            problems.append(cap.problem)
    ws, climit = _container_memory(last, proc_root)
    ex: Explanation = explain(TriageInput(
        pid=pid, runtime=last.runtime, rss_bytes=last.rss_bytes, managed_heap_limit_bytes=limit, growth=growth,
        window_s=window, samples=n_samples, heap_post_gc=trend, gc_time_ratio=ratio, sites=sites,
        container_working_set_bytes=ws, container_limit_bytes=climit,
        min_slope_bytes_per_second=MIN_SLOPE_BYTES_PER_SECOND, min_window_s=min_window))
    return {
        "pid": pid, "comm": last.comm, "runtime": last.runtime, "rss_bytes": last.rss_bytes,
        "managed_heap_limit_bytes": limit, "verdict": ex.verdict,
        "growing": [g.to_json() for g in ex.growing],
        "heap_post_gc": trend.to_json() if trend is not None else None,
        "gc_time_ratio": round(ratio, 5) if ratio is not None else None,
        "sites": [dict(s) for s in ex.sites], "next_steps": list(ex.next_steps),
        "summary": ex.summary, "evidence": list(ex.evidence),
        "categories": {c: int(last.categories.get(c, 0)) for c in CATEGORIES},
        "container": ({**last.container.to_json(), "working_set_bytes": ws, "limit_bytes": climit}
                      if last.container is not None else None),
        "window": {"start_time": round(t_start, 3), "duration_s": round(elapsed, 3), "samples": len(samples),
                   "collections": (gc.samples[-1].collections - gc.samples[0].collections) if gc.samples else 0},
        "capture": capture_doc, "growth_source": source, "problems": problems,
    }


def render_text(doc: dict[str, Any]) -> str:
    lines = [doc["summary"], f"verdict: {doc['verdict']}   RSS {human_bytes(doc['rss_bytes'])}"
             + (f"   managed-heap limit {human_bytes(doc['managed_heap_limit_bytes'])}"
                if doc["managed_heap_limit_bytes"] else ""), "", "evidence:"]
    lines += [f"  - {e}" for e in doc["evidence"]] or ["  - none"]
    if doc["sites"]:
        lines += ["", "allocation sites holding the growth:"]
        lines += [f"  {human_bytes(s['outstanding_bytes']):>12}  " + " <- ".join(s["frames"][:4]) for s in doc["sites"][:5]]
    lines += ["", "next steps:"] + [f"  {i}. {s}" for i, s in enumerate(doc["next_steps"], 1)]
    lines += [f"note: {p}" for p in doc["problems"]]
    return "\n".join(lines)


@click.command("explain")
@click.option("--pid", "-p", type=int, help="Process to explain.")
@click.option("--container", "container_id", help="Container id (or a prefix): explains its largest process.")
@click.option("--pod", help="NAMESPACE/NAME: its largest process on this node (asks the API server with the "
                            "in-cluster service account).")
@click.option("--duration", "-d", type=DURATION, default="60s", show_default=True, help="How long to watch.")
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="Breakdown sampling interval.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
@click.option("--no-capture", is_flag=True, help="Do not run an allocation capture beside the sampling.")
@click.option("--max-overhead", default="5%", show_default=True, help="Budget of the capture, share of one core.")
@click.option("--no-attach", is_flag=True, help="Never talk to the process (no JVM attach for NMT).")
@click.option("--agent", "agent_url", default=None,
              help="The node agent whose growth history to use when it watches the process "
                   "(default $NATIVEWATCH_AGENT_URL, else http://127.0.0.1:9847; 'none': only sample).")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
def command(pid: int | None, container_id: str | None, pod: str | None, duration: float, interval: float,
            as_json: bool, no_capture: bool, max_overhead: str, no_attach: bool, agent_url: str | None,
            proc_root: str) -> None:
    """Is it a heap leak, an off-heap leak, or no leak; and what to do next."""
    from nativewatch.malloc_profile.governor import parse_overhead

    if sum(x is not None for x in (pid, container_id, pod)) != 1:
        fail("give exactly one of --pid, --container, --pod")
    if duration <= 0 or interval <= 0 or interval > duration:
        fail("duration and interval must be positive, the interval at most the duration")
    try:
        budget = parse_overhead(max_overhead)
    except ValueError as exc:
        fail(str(exc))
    if pid is not None:
        target = pid
    elif container_id is not None:
        target = _container_pid(container_id, proc_root)
    else:
        target = _pod_pid(str(pod), proc_root)
    if target <= 0:
        fail(f"invalid pid: {target}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if not as_json:
        click.echo(f"nativewatch: watching pid {target} for {duration:g}s (Ctrl-C ends the window early)", err=True)
    try:
        from nativewatch.agent_history import DEFAULT_AGENT_URL

        url = agent_url or os.environ.get("NATIVEWATCH_AGENT_URL") or DEFAULT_AGENT_URL
        doc = run_explain(target, duration, interval, proc_root=proc_root, capture=not no_capture,
                          max_overhead=budget, attach=not no_attach, stop=stop,
                          agent_url=None if url.lower() == "none" else url)
    except (ProcessGone, AccessDenied) as exc:
        pid_errors(target, exc)
    click.echo(json.dumps(doc) if as_json else render_text(doc))
