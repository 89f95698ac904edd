"""The agent's scan loop: cheap sources every interval, full attribution under a CPU budget, growth,
OOM post-mortems, auto-capture, history; one immutable `AgentView` published per scan.

Cadence, per scan:
  1. /proc/PID/stat for every pid (name, RSS, start time, kernel thread?): a few µs per process.
  2. Full attribution (`take_snapshot`, the same sources as `nativewatch snapshot`) for the processes
     that are due, in priority order (tracked pids, never-seen, then stalest), until the scan has used
     `scan_budget_s` of CPU (at least one per scan); the rest wait for the next scan (counted as
     deferred). A JVM's NMT attach runs at most every `nmt_interval_s`; in between its last breakdown
     stands.
  3. Kill events (eBPF, else cgroup counters), page-fault stacks, container memcg figures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nativewatch import cachestats
from nativewatch.agent.config import AgentConfig
from nativewatch.agent.evidence import dominant_category, evidence_id, write_evidence
from nativewatch.agent.store import HistoryStore, open_store
from nativewatch.agent.views import AgentView, ContainerLabels, ContainerView, ProcessView
from nativewatch.errors import AccessDenied, ProcessGone, SourceUnavailable
from nativewatch.growth import LeakVerdict
from nativewatch.model import CATEGORIES, Breakdown, ContainerInfo
from nativewatch.runtimes.registry import runtime_named
from nativewatch.sources import procfs
from nativewatch.sources.cgroup import CgroupGone, CgroupMemory, read_container_memory, read_proc_cgroup
from nativewatch.sources.oom import BpfOomWatcher, CgroupOomWatcher, OomEvent
from nativewatch.sources.procstat import ProcStat, read_stat
from nativewatch.tracker import ContainerMemoryFacts, Tracker, container_key, memory_facts, process_key
from nativewatch.triage import Explanation, TriageInput, explain

__all__ = ["Agent", "Sampler", "ProcfsSampler"]

log = logging.getLogger("nativewatch.agent")


class Sampler(Protocol):
    def list_pids(self) -> list[int]: ...
    def stat(self, pid: int) -> ProcStat | None: ...
    def full(self, pid: int, *, jvm: bool) -> Breakdown: ...
    def memory_cgroup(self, pid: int) -> str | None: ...


class ProcfsSampler:
    """The real sources: procfs and `take_snapshot`, under one proc root."""

    def __init__(self, proc_root: str = "/proc", jvm_timeout_s: float = 2.0,
                 cgroup_root: str = "/sys/fs/cgroup") -> None:
        self.proc_root = proc_root
        self.jvm_timeout_s = jvm_timeout_s
        self.cgroup_root = cgroup_root

    def list_pids(self) -> list[int]:
        return procfs.list_pids(self.proc_root)

    def stat(self, pid: int) -> ProcStat | None:
        return read_stat(pid, self.proc_root)

    def full(self, pid: int, *, jvm: bool) -> Breakdown:
        from nativewatch.snapshot import take_snapshot

        return take_snapshot(pid, proc_root=self.proc_root, jvm=jvm, jvm_timeout_s=self.jvm_timeout_s,
                             cgroup_root=self.cgroup_root)

    def memory_cgroup(self, pid: int) -> str | None:
        return read_proc_cgroup(pid, self.proc_root).memory_path


@dataclass(slots=True)
class _Proc:
    pid: int
    start: int
    comm: str
    rss_bytes: int
    kernel_thread: bool
    state: str = ""
    last: Breakdown | None = None
    last_full_t: float = 0.0
    full_rss_bytes: int = 0  # the cheap source's RSS when `last` was taken (compared like with like)
    last_nmt_t: float = 0.0
    growth: dict[str, LeakVerdict] = field(default_factory=dict)
    memcg: str | None = None  # path of the memory cgroup
    dead_at: float | None = None
    last_stored_t: float = 0.0
    captured_at: float = 0.0
    attach_failures: int = 0  # consecutive JVM attaches that failed (timed out, refused)
    attach_retry_at: float = 0.0  # until then the JVM gets the passive view: no signal, no wait

    @property
    def key(self) -> str:
        return process_key(self.pid, self.start)


@dataclass(slots=True)
class _Container:
    id: str
    info: ContainerInfo | None
    last_seen: float = 0.0
    leak_events: set[str] = field(default_factory=set)  # categories already reported as an Event


class Agent:
    """One node agent. `scan_once()` does one scan; `run(stop)` loops until `stop` is set."""

    def __init__(self, cfg: AgentConfig, *, sampler: Sampler | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.sampler = sampler or ProcfsSampler(cfg.proc_root, cgroup_root=cfg.cgroup_root)
        self.clock = clock
        self.procs: dict[int, _Proc] = {}
        self.dead: dict[tuple[int, int], _Proc] = {}
        self.containers: dict[str, _Container] = {}
        self.own_children: set[int] = set()  # processes the agent started (captures): not symbolized
        # The analyze stage (history, growth, container totals): the same one top and soak use. Points
        # are kept per full breakdown (every full_interval_s, every scan while a process moves).
        self.tracker = Tracker(cfg.policy, max_points=int(cfg.window_s / cfg.interval_s) + 16)
        self.errors: Counter[str] = Counter()
        # Pids that vanished between being listed and being read: the normal race of a busy node,
        # counted per stage, never logged as errors.
        self.vanished: Counter[str] = Counter()
        self.scan_overruns = 0  # scans that took longer than the interval
        # Runtime faults (state dir unwritable, history store failing, kernel map full): what is
        # degraded right now and why; /healthz says "degraded" while any is present.
        self.faults_now: dict[str, str] = {}
        self.notices: deque[str] = deque(maxlen=8)  # said once at start-up (e.g. a store moved aside)
        # Evidence that could not be written yet: kept, retried every scan, bounded.
        self.pending_evidence: deque[dict[str, Any]] = deque()
        self.evidence_dropped = 0
        self._map_full_seen: int | None = None  # the page-fault map_full counter at the last scan
        # The latest errors with their pid, for /healthz and for telling a bad target from a bug.
        self.error_log: deque[tuple[float, str, int | None, str]] = deque(maxlen=64)
        self.degraded: dict[str, str] = {}
        self.oom_kills: Counter[tuple[str, str, str, str, str]] = Counter()
        self.evidence_total: Counter[str] = Counter()
        self.sites: dict[int, list[dict[str, Any]]] = {}
        self.scans = 0
        self.full_total = 0
        self.deferred_total = 0
        self.scan_duration_sum = 0.0
        self._view = AgentView()
        self._view_lock = threading.Lock()
        self._capture_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.store: HistoryStore | None = None
        try:
            self.store, notice = open_store(cfg.state_dir, retention_s=cfg.retention_s)
            if notice:
                log.warning("%s", notice)
                self.notices.append(notice)
        except Exception as exc:  # noqa: BLE001 - the agent runs without history rather than not at all
            self.degraded["store"] = f"history store unavailable: {exc}"
        self.oom_bpf: BpfOomWatcher | None = None
        self.faults: Any = None
        self.oom_cgroup = CgroupOomWatcher(self._read_memcg)
        self._pending_kills: list[tuple[str, float]] = []  # (memory cgroup, when its counter rose)
        self._claimed: set[tuple[int, int]] = set()  # dead (pid, start) already named as a victim
        self.pod_meta = self._pod_metadata()
        self.events = self._event_recorder()
        if cfg.bpf:
            self._start_bpf()
        else:
            self.degraded["bpf"] = "disabled by configuration"
        self._profiler = self._find_profiler()

    # --- sources that may be missing -------------------------------------------------------------
    def _start_bpf(self) -> None:
        from nativewatch.malloc_profile.elfimage import set_cache_budget
        from nativewatch.unwind import tables as cfi_tables

        set_cache_budget(self.cfg.symbol_cache_symbols)
        cfi_tables.set_cache_budget(self.cfg.cfi_cache_bytes, fdes_per_file=256)
        try:
            self.oom_bpf = BpfOomWatcher()
        except SourceUnavailable as exc:
            self.degraded["bpf-oom"] = f"{exc}; OOM kills are read from cgroup counters instead"
        try:
            from nativewatch.sources.page_faults import PageFaultSampler

            self.faults = PageFaultSampler(self.cfg.page_fault_sample_every,
                                           max_entries=self.cfg.page_fault_max_entries,
                                           stack_entries=self.cfg.page_fault_stack_entries,
                                           proc_root=self.cfg.proc_root,
                                           stack_copy=self.cfg.page_fault_stack_copy)
        except SourceUnavailable as exc:
            self.degraded["bpf-page-faults"] = f"{exc}; no resident-growth stacks"

    def _pod_metadata(self) -> Any:
        try:
            from nativewatch.k8s_meta import PodMetadata
        except ImportError as exc:
            self.degraded["k8s-meta"] = f"pod metadata unavailable ({exc}): container labels carry ids only"
            return None
        meta = PodMetadata.from_environment()
        if meta.watcher is None:
            self.degraded["k8s-meta"] = f"no Kubernetes API: container labels carry ids only ({meta.why_not})"
        else:
            meta.start()
        return meta

    def _event_recorder(self) -> Any:
        """Kubernetes Events on explained pods, when the agent runs in a cluster (it needs the API
        server; the kubelet has no events API)."""
        if not self.cfg.kubernetes_events:
            return None
        from nativewatch.k8s_events import EventRecorder
        from nativewatch.k8s_meta import in_cluster_endpoint

        endpoint, _why = in_cluster_endpoint()
        if endpoint is None:
            return None  # outside a cluster; k8s-meta already says why there is no API
        rec = EventRecorder(endpoint)
        rec.start()
        return rec

    def _pod_of(self, info: ContainerInfo | None) -> Any:
        """The pod (namespace, name, uid) of a container, None when the metadata does not know it."""
        index = getattr(self.pod_meta, "index", None)
        if info is None or index is None:
            return None
        pc = index.lookup(info.id)
        if pc is None or not pc.pod or not pc.pod_uid:
            return None
        from nativewatch.k8s_events import PodRef

        return PodRef(pc.namespace, pc.pod, pc.pod_uid)

    def _event(self, info: ContainerInfo | None, reason: str, message: str) -> None:
        pod = self._pod_of(info) if self.events is not None else None
        if pod is not None:
            self.events.post(pod, reason, message)

    def labels(self, info: ContainerInfo | None) -> ContainerLabels:
        if info is None:
            return ContainerLabels()
        if self.pod_meta is not None:
            d = self.pod_meta.labels(info)
            return ContainerLabels(d.get("namespace", ""), d.get("pod", ""), d.get("container", ""),
                                   d.get("container_id", info.id))
        return ContainerLabels(container_id=info.id)

    def _read_memcg(self, path: str) -> CgroupMemory | None:
        try:
            return read_container_memory(path, cgroup_root=self.cfg.cgroup_root, proc_root=self.cfg.proc_root)
        except (CgroupGone, SourceUnavailable, OSError):
            return None

    def _find_profiler(self) -> Callable[..., Any] | None:
        if not self.cfg.auto_capture:
            self.degraded["auto-capture"] = "disabled by configuration"
            return None
        try:
            import nativewatch.malloc_profile  # noqa: F401 - only whether the child will find it
        except ImportError as exc:
            self.degraded["auto-capture"] = f"nativewatch.malloc_profile not importable ({exc})"
            return None
        return self._profile_in_child

    def profile_argv(self, pid: int, duration_s: float, pprof: Path | None) -> list[str]:
        return [sys.executable, "-m", "nativewatch.cli", "profile", "--pid", str(pid), "--duration",
                f"{duration_s:g}s", "--mode", "sampled", "--json", "--proc-root", self.cfg.proc_root,
                "--max-overhead", repr(self.cfg.auto_capture_max_overhead or 0),
                "--jvm" if self._may_attach() else "--no-jvm",
                "--inject" if self.cfg.inject else "--no-inject",
                *(["-o", str(pprof)] if pprof is not None else [])]

    def _profile_in_child(self, pid: int, duration_s: float, pprof: Path | None) -> dict[str, Any]:
        """`nativewatch profile` as a child process: bcc compiles its uprobe program there, so the
        compiler never stays resident in the agent. Stopped early (SIGTERM: it keeps what it has) when
        the agent stops. Raises ProcessGone if the target exited, RuntimeError with the reason else."""
        with subprocess.Popen(self.profile_argv(pid, duration_s, pprof), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as child:
            self.own_children.add(child.pid)
            try:
                deadline = time.monotonic() + duration_s + 120  # compile + attach + capture + writing
                while child.poll() is None:
                    if self._stop.wait(0.2):
                        child.terminate()
                    if time.monotonic() > deadline:
                        child.kill()
                out, err = child.communicate(timeout=30)
            finally:
                self.own_children.discard(child.pid)
        if child.returncode == 0 and out.strip():
            return dict(json.loads(out))
        if not os.path.exists(f"{self.cfg.proc_root}/{pid}"):
            raise ProcessGone(pid)
        raise RuntimeError((err.strip().splitlines() or [f"exit status {child.returncode}"])[-1][:300])

    def close(self) -> None:
        self._stop.set()
        if self._capture_thread is not None:
            self._capture_thread.join(timeout=self.cfg.auto_capture_duration_s + 10)
        for src in (self.oom_bpf, self.faults):
            if src is not None:
                with contextlib.suppress(Exception):  # best effort at shutdown
                    src.close()
        if self.pod_meta is not None:
            self.pod_meta.stop()
        if self.events is not None:
            self.events.flush(5.0)
            self.events.stop()
        if self.store is not None:
            self.store.close()

    # --- the published view ----------------------------------------------------------------------
    @property
    def view(self) -> AgentView:
        with self._view_lock:
            return self._view

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                self.scan_once()
            except Exception:  # noqa: BLE001 - a bug in one scan must not end the agent
                log.exception("scan failed")
                self.errors["scan"] += 1
            took = time.monotonic() - t0
            if took > self.cfg.interval_s:
                self.scan_overruns += 1
            stop.wait(max(0.0, self.cfg.interval_s - took))

    # --- one scan --------------------------------------------------------------------------------
    def scan_once(self) -> AgentView:
        cfg = self.cfg
        now = self.clock()
        wall0, cpu0 = time.monotonic(), time.process_time()
        self_pid = os.getpid()
        seen: set[int] = set()
        for pid in self.sampler.list_pids():
            try:
                st = self.sampler.stat(pid)
            except ProcessGone:
                self.vanished["stat"] += 1
                continue
            except (AccessDenied, OSError) as exc:
                self._error("stat", pid, str(exc))
                continue
            if st is None:
                self._error("stat", pid, "unparsable /proc/PID/stat")
                continue
            seen.add(pid)
            rec = self.procs.get(pid)
            if rec is not None and rec.start != st.starttime:
                self._bury(rec, now)
                rec = None
            if rec is None:
                rec = self.procs[pid] = _Proc(pid, st.starttime, st.comm, st.rss_bytes,
                                              st.kernel_thread or pid == self_pid)
            rec.comm, rec.rss_bytes, rec.state = st.comm, st.rss_bytes, st.state
        for pid in [p for p in self.procs if p not in seen]:
            self._bury(self.procs.pop(pid), now)

        self._full_pass(now, cpu0)
        kills = self._poll_oom(now)
        if self.faults is not None:
            try:
                # The agent's own children (a capture compiling its probes with bcc) fault through
                # libLLVM: symbolizing that would cost the agent tens of MiB for nothing.
                own = set(self.own_children)
                interesting = ({r.pid for r in self._capped()} | set(self.cfg.track)) - own
                self.faults.collect((set(self.procs) | {p.pid for p in self.dead.values()}) - own, interesting)
            except Exception:  # noqa: BLE001 - a map read failure costs only this scan's stacks
                log.exception("page-fault stacks")
                self.errors["bpf-page-faults"] += 1
        self._check_fault_maps()
        for ev in kills:
            self._post_mortem(ev, now)
        self._flush_evidence()
        containers = self._containers(now)
        self._auto_capture(now)
        self._persist(now, containers)
        for key in [k for k, p in self.dead.items() if p.dead_at is not None
                    and now - p.dead_at > cfg.dead_grace_s]:
            self._drop_dead(key)
        known = set(self.procs) | {pid for pid, _ in self.dead}
        for pid in [p for p in list(self.sites) if p not in known]:  # list(): the capture thread adds
            del self.sites[pid]
        self.scans += 1
        dur = time.monotonic() - wall0
        self.scan_duration_sum += dur
        view = self._publish(now, containers, dur, time.process_time() - cpu0)
        return view

    def _error(self, source: str, pid: int | None = None, detail: str = "") -> None:
        self.errors[source] += 1
        self.error_log.append((self.clock(), source, pid, detail[:200]))

    def _bury(self, rec: _Proc, now: float) -> None:
        rec.dead_at = now
        if rec.last is None:
            self.tracker.forget([rec.key])
            return
        self.dead[(rec.pid, rec.start)] = rec
        if len(self.dead) > self.cfg.dead_max:
            # The OOM killer picks the largest process: the smallest dead record is the least likely
            # victim of a late kill event, and the one to let go.
            self._drop_dead(min(self.dead, key=lambda k: self.dead[k].rss_bytes))

    def _drop_dead(self, key: tuple[int, int]) -> None:
        rec = self.dead.pop(key)
        self._claimed.discard(key)
        self.tracker.forget([rec.key])

    def _may_attach(self) -> bool:
        return self.cfg.jvm_attach and "jvm" not in self.degraded

    def _due(self, rec: _Proc, now: float) -> bool:
        if rec.kernel_thread or rec.state in ("Z", "X"):
            return False
        if (rec.last is not None and runtime_named(rec.last.runtime).needs_attach and self._may_attach()
                and now >= rec.attach_retry_at):
            # Even when tracked: an attach per scan is not cheap, and a breakdown without NMT would
            # move bytes between categories from one scan to the next.
            return now - rec.last_nmt_t >= self.cfg.nmt_interval_s
        if rec.pid in self.cfg.track:
            return True
        if rec.last is not None and abs(rec.rss_bytes - rec.full_rss_bytes) >= self.cfg.moving_bytes:
            return True
        return now - rec.last_full_t >= self.cfg.full_interval_s

    def _full_pass(self, now: float, cpu0: float) -> None:
        cfg = self.cfg
        due = [r for r in self.procs.values() if self._due(r, now)]
        tracked = set(cfg.track)
        # Tracked first, then never scanned (largest first), then the stalest.
        due.sort(key=lambda r: (r.pid not in tracked, r.last is not None, r.last_full_t, -r.rss_bytes))
        untracked_done = 0
        for rec in due:
            if rec.pid not in tracked:
                # At least one per scan, so that a tiny budget still covers everyone eventually.
                if untracked_done and time.process_time() - cpu0 > cfg.scan_budget_s:
                    self.deferred_total += 1
                    continue
                untracked_done += 1
            jvm = (self._may_attach() and (rec.last is None or runtime_named(rec.last.runtime).needs_attach)
                   and now >= rec.attach_retry_at)
            try:
                try:
                    bd = self.sampler.full(rec.pid, jvm=jvm)
                except ImportError as exc:
                    # The JVM refinement is not installed: plain native view, said once.
                    self.degraded["jvm"] = f"JVM attribution unavailable ({exc}); JVMs get the native view"
                    jvm = False
                    bd = self.sampler.full(rec.pid, jvm=False)
            except ProcessGone:
                self.vanished["attribution"] += 1
                continue
            except AccessDenied as exc:
                self._error("smaps", rec.pid, str(exc))
                rec.last_full_t = now  # retried at the full cadence, not every scan
                continue
            except Exception as exc:  # noqa: BLE001 - one odd process never stops the scan
                log.debug("snapshot of %d failed", rec.pid, exc_info=True)
                self._error("attribution", rec.pid, f"{type(exc).__name__}: {exc}")
                rec.last_full_t = now
                continue
            self.full_total += 1
            if bd.rss_bytes == 0 and rec.last is not None and rec.last.rss_bytes > 0:
                # Exiting (or being OOM-killed): its address space is already gone. Not a sample.
                rec.last_full_t = now
                continue
            rec.last, rec.last_full_t, rec.full_rss_bytes = bd, now, rec.rss_bytes
            if runtime_named(bd.runtime).needs_attach and jvm:
                rec.last_nmt_t = now
                self._attach_outcome(rec, bd, now)
            if rec.memcg is None:
                try:
                    rec.memcg = self.sampler.memory_cgroup(rec.pid)
                except (ProcessGone, AccessDenied, OSError):
                    rec.memcg = None
            self.tracker.observe(rec.key, now, bd.rss_bytes, bd.categories)
            rec.growth = self.tracker.category_growth(rec.key)
            if bd.extra.get("top_sites"):
                self.sites[rec.pid] = list(bd.extra["top_sites"])[: cfg.top_sites]

    ATTACH_BACKOFF_MAX_S = 6 * 3600.0

    def _attach_outcome(self, rec: _Proc, bd: Breakdown, now: float) -> None:
        """A JVM whose attach failed (hung, refused) is not asked again for a while, doubling each
        time: every attempt costs the scan up to the attach timeout, and a hung JVM stays hung.
        Meanwhile it gets the passive view (hsperfdata + smaps)."""
        failure = next((p for p in bd.problems if p.startswith("attach failed")), None)
        if failure is not None:
            rec.attach_failures += 1
            base = max(self.cfg.nmt_interval_s, 60.0)
            rec.attach_retry_at = now + min(self.ATTACH_BACKOFF_MAX_S, base * 2 ** (rec.attach_failures - 1))
            self._error("jvm-attach", rec.pid, failure)
        else:
            rec.attach_failures, rec.attach_retry_at = 0, 0.0

    # --- OOM ---------------------------------------------------------------------------------------
    def _poll_oom(self, now: float) -> list[OomEvent]:
        if self.oom_bpf is not None:
            try:
                return self.oom_bpf.poll()
            except Exception:  # noqa: BLE001
                log.exception("oom ring buffer")
                self.errors["bpf-oom"] += 1
                return []
        cgroups = {r.memcg for r in self.procs.values() if r.memcg is not None}
        cgroups |= {r.memcg for r in self.dead.values() if r.memcg is not None}
        for key, n in self.oom_cgroup.poll(cgroups).items():
            self._pending_kills.extend([(key, now)] * n)
        # The counter can rise a scan before the victim leaves /proc: the victim is a process of that
        # cgroup that vanished around then. Wait a few scans for it before reporting an unnamed kill.
        events: list[OomEvent] = []
        patience = max(3 * self.cfg.interval_s, 5.0)
        still: list[tuple[str, float]] = []
        for key, since in self._pending_kills:
            cands = [r for k, r in self.dead.items() if r.memcg == key and k not in self._claimed
                     and r.dead_at is not None and r.dead_at >= since - 2 * self.cfg.interval_s]
            v = max(cands, key=lambda r: r.rss_bytes, default=None)
            if v is not None:
                self._claimed.add((v.pid, v.start))
                events.append(OomEvent(pid=v.pid, comm=v.comm, source="cgroup", ts=now, cgroup=key))
            elif now - since > patience:
                events.append(OomEvent(pid=None, comm="", source="cgroup", ts=now, cgroup=key))
            else:
                still.append((key, since))
        self._pending_kills = still
        return events

    def _find_record(self, pid: int | None) -> _Proc | None:
        if pid is None:
            return None
        cands = [r for r in self.dead.values() if r.pid == pid]
        if pid in self.procs and self.procs[pid].last is not None:
            cands.append(self.procs[pid])
        return max(cands, key=lambda r: r.last_full_t, default=None)

    def _post_mortem(self, ev: OomEvent, now: float) -> None:
        rec = self._find_record(ev.pid)
        bd = rec.last if rec else None
        times, series = self.tracker.series(rec.key) if rec else ([], {})
        hist_dicts = [{c: series[c][i] for c in CATEGORIES} for i in range(len(times))]
        dominant = dominant_category(hist_dicts, bd.categories if bd else None) or "unknown"
        labels = self.labels(bd.container if bd else None)
        self.oom_kills[(*labels.values(), dominant)] += 1
        cg = rec.memcg if rec else ev.cgroup
        memcg = self._read_memcg(cg) if cg else None
        doc: dict[str, Any] = {
            "id": evidence_id("oom", ev.ts, ev.pid),
            "kind": "oom",
            "time": ev.ts,
            "pid": ev.pid,
            "comm": ev.comm or (rec.comm if rec else ""),
            "detected_by": ev.source,
            "kernel": {"anon_rss_bytes": ev.anon_rss_bytes, "file_rss_bytes": ev.file_rss_bytes,
                       "shmem_rss_bytes": ev.shmem_rss_bytes},
            "container": bd.container.to_json() if bd and bd.container else None,
            "labels": dict(zip(labels.NAMES, labels.values(), strict=True)),
            "cgroup": cg,
            "cgroup_memory": memcg.to_json() if memcg else None,
            "dominant_category": dominant,
            "last_breakdown": bd.to_json() if bd else None,
            "history": {"window_s": self.cfg.window_s, "times": times,
                        "categories": {c: series.get(c, []) for c in CATEGORIES}},
            "growth": {c: v.to_json() for c, v in (rec.growth if rec else {}).items()},
            "top_stacks": ([s.to_json() for s in self.faults.top(ev.pid, 10)]
                           if self.faults is not None and ev.pid is not None else None),
            "nmt": bd.runtime_details.get("nmt") if bd else None,
            "native_sites": self.sites.get(ev.pid) if ev.pid is not None else None,
            "degraded": dict(self.degraded),
        }
        if rec is None:
            doc["problems"] = [f"no breakdown of pid {ev.pid} was taken before it was killed"]
        elif bd is not None:
            doc["explanation"] = self._explain(rec, bd, times, doc).to_json()
        self._write_evidence(doc)
        ex = doc.get("explanation") or {}
        what = ex.get("summary") or f"{dominant} memory grew most"
        self._event(bd.container if bd else None, "NativeMemoryOOMKilled",
                    f"OOM-killed (container {labels.container or '?'}): {what}; evidence {doc['id']} "
                    f"on node {self.events.host if self.events is not None else '?'}")

    def _explain(self, rec: _Proc, bd: Breakdown, times: list[float], doc: dict[str, Any]) -> Explanation:
        """The triage from what the agent had: its growth verdicts and history, the allocation sites of a
        capture or the page-fault stacks (no post-GC floor: the agent does not poll hsperfdata)."""
        sites = doc.get("native_sites") or [
            {"frames": s.get("frames", []), "outstanding_bytes": s.get("bytes", 0)}
            for s in (doc.get("top_stacks") or [])]
        mem = doc.get("cgroup_memory") or {}
        return explain(TriageInput(
            pid=rec.pid, runtime=bd.runtime, rss_bytes=bd.rss_bytes, managed_heap_limit_bytes=None,
            growth=rec.growth or {}, window_s=(times[-1] - times[0]) if len(times) > 1 else 0.0,
            samples=len(times), sites=sites, container_working_set_bytes=mem.get("working_set_bytes"),
            container_limit_bytes=mem.get("limit_bytes"), min_window_s=self.cfg.min_leak_window_s,
            min_slope_bytes_per_second=self.cfg.policy.min_slope_bytes_per_second))

    def _write_evidence(self, doc: dict[str, Any]) -> None:
        """Write now, or keep it for the next scan's retry (the evidence dir read-only or full)."""
        if self.pending_evidence or not self._try_write(doc):
            self._keep_pending(doc)

    def _keep_pending(self, doc: dict[str, Any]) -> None:
        # deque.append is atomic: the capture thread may add while the scan thread flushes
        self.pending_evidence.append(doc)
        while len(self.pending_evidence) > self.cfg.evidence_pending_max:
            lost = self.pending_evidence.popleft()
            self.evidence_dropped += 1
            log.error("evidence %s dropped: %d documents already wait for a writable evidence dir",
                      lost.get("id"), self.cfg.evidence_pending_max)

    def _flush_evidence(self) -> None:
        """Retry kept evidence, oldest first; stop at the first failure (the dir is still unwritable)."""
        while self.pending_evidence:
            doc = self.pending_evidence[0]
            if not self._try_write(doc):
                return
            self.pending_evidence.popleft()
        self.faults_now.pop("evidence", None)

    def _try_write(self, doc: dict[str, Any]) -> bool:
        try:
            path = write_evidence(self.cfg.evidence_dir, doc)
        except OSError as exc:
            if "evidence" not in self.faults_now:
                log.error("cannot write evidence %s: %s; kept in memory and retried every scan", doc["id"], exc)
            self.errors["evidence"] += 1
            self.faults_now["evidence"] = (f"evidence dir {self.cfg.evidence_dir} not writable ({exc.strerror or exc}); "
                                           "documents kept in memory (evidence_pending), retried every scan")
            return False
        self.evidence_total[doc["kind"]] += 1
        log.warning("evidence %s written to %s", path.stem, path)
        if self.store is not None:
            try:
                self.store.add_evidence(path.stem, doc["time"], doc["kind"], doc.get("pid"), doc.get("comm"),
                                        doc.get("dominant_category"), path)
            except Exception:  # noqa: BLE001 - the file is the record; the index is a convenience
                self.errors["store"] += 1
        return True

    def _check_fault_maps(self) -> None:
        """A kernel map that filled since the last scan is a fault of this scan (the lost counts
        themselves are exported as counters)."""
        if self.faults is None:
            return
        try:
            stats = self.faults.stats()
        except Exception:  # noqa: BLE001 - counted where the view reads stats
            return
        lost = stats.get("map_full", 0)
        prev = lost if self._map_full_seen is None else self._map_full_seen
        self._map_full_seen = lost
        if lost > prev:
            self.faults_now["bpf-page-faults-map-full"] = (
                f"page-fault counter map full: {lost - prev} samples lost in the last scan "
                f"(page_fault_max_entries={self.cfg.page_fault_max_entries})")
        else:
            self.faults_now.pop("bpf-page-faults-map-full", None)

    # --- containers --------------------------------------------------------------------------------
    def _containers(self, now: float) -> list[ContainerView]:
        members: list[Breakdown] = []
        memcg_of: dict[str, str] = {}
        for rec in self.procs.values():
            if rec.last is not None and rec.last.container is not None:
                members.append(rec.last)
                if rec.memcg is not None:
                    memcg_of.setdefault(rec.last.container.id, rec.memcg)

        def memory(info: ContainerInfo) -> ContainerMemoryFacts | None:
            path = memcg_of.get(info.id)
            mem = self._read_memcg(path) if path else None
            return memory_facts(mem) if mem is not None else None

        views: list[ContainerView] = []
        for summary in self.tracker.containers(members, now, memory, include_host=False):
            c = self.containers.get(summary.id)
            if c is None:
                c = self.containers[summary.id] = _Container(summary.id, summary.info)
            c.last_seen = now
            facts = summary.memory
            self._leak_event(c, summary.growth)
            views.append(ContainerView(
                id=summary.id, info=c.info, labels=self.labels(c.info), categories=summary.categories,
                growth=summary.growth, pids=tuple(sorted(b.pid for b in summary.members)),
                usage_bytes=facts.usage_bytes if facts else None,
                working_set_bytes=facts.working_set_bytes if facts else None,
                limit_bytes=facts.limit_bytes if facts else None,
                total_growth_bytes_per_second=summary.total_growth.bytes_per_second,
                oom_eta_s=summary.oom_eta_s))
        for cid in [k for k, c in self.containers.items() if now - c.last_seen > self.cfg.dead_grace_s]:
            del self.containers[cid]
            self.tracker.forget([container_key(cid)])
        return views

    def _leak_event(self, c: _Container, growth: dict[str, LeakVerdict]) -> None:
        """One Event per container and growing category, when its verdict first says leak."""
        if self.events is None:
            return
        for cat, v in growth.items():
            if v.leak and cat not in c.leak_events:
                c.leak_events.add(cat)
                labels = self.labels(c.info)
                self._event(c.info, "NativeMemoryLeak",
                            f"{cat} memory of container {labels.container or c.id[:12]} grows "
                            f"{v.bytes_per_second / 1048576:.2f} MiB/s ({v.tier} verdict, fit {v.fit.fit:.2f}); "
                            f"`nativewatch explain --container {c.id[:12]}` on node {self.events.host} says what "
                            "holds it")

    # --- auto-capture ------------------------------------------------------------------------------
    def _auto_capture(self, now: float) -> None:
        if self._profiler is None or (self._capture_thread is not None and self._capture_thread.is_alive()):
            return
        cfg = self.cfg
        for rec in sorted(self.procs.values(), key=lambda r: -r.rss_bytes):
            v = rec.growth.get("native")
            if v is None or not v.leak or now - rec.captured_at < cfg.auto_capture_cooldown_s:
                continue
            if v.fit.bytes_per_second * v.fit.window_s < cfg.auto_capture_min_growth_bytes:
                continue
            rec.captured_at = now
            self._capture_thread = threading.Thread(target=self._capture, args=(rec.pid, rec.comm, v),
                                                    name=f"auto-capture-{rec.pid}", daemon=True)
            self._capture_thread.start()
            return

    def _capture(self, pid: int, comm: str, verdict: LeakVerdict) -> None:
        cfg = self.cfg
        t0 = self.clock()
        doc: dict[str, Any] = {"id": evidence_id("capture", t0, pid), "kind": "auto-capture", "time": t0,
                               "pid": pid, "comm": comm, "trigger": verdict.to_json(),
                               "dominant_category": "native"}
        try:
            assert self._profiler is not None
            pprof: Path | None = cfg.evidence_dir / f"{doc['id']}.pb.gz"
            try:
                cfg.evidence_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # the JSON is kept (pending) even where the pprof cannot go
                doc["problems"] = [f"pprof not written: {exc}"]
                pprof = None
            profile = self._profiler(pid, cfg.auto_capture_duration_s, pprof)
            doc["profile"] = profile
            sites = list(profile.get("sites", []))[: cfg.top_sites]
            self.sites[pid] = sites
            if pprof is not None and pprof.exists():
                doc["pprof"] = str(pprof)
        except ProcessGone:
            return
        except Exception as exc:  # noqa: BLE001 - a failed capture is recorded, not raised
            self.errors["auto-capture"] += 1
            doc["problems"] = [f"profile failed: {exc}"]
        self._write_evidence(doc)

    # --- history store -----------------------------------------------------------------------------
    def _persist(self, now: float, containers: list[ContainerView]) -> None:
        if self.store is None:
            return
        rows = []
        stored: list[_Proc] = []
        for rec in self._capped():
            if rec.last is not None and now - rec.last_stored_t >= self.cfg.history_interval_s:
                stored.append(rec)
                doc = rec.last.to_json()
                doc["growth"] = {c: {"bytes_per_second": v.fit.bytes_per_second, "leak": v.leak}
                                 for c, v in rec.growth.items()}
                doc.pop("cmdline", None)
                rows.append(doc)
        try:
            if rows:
                self.store.add_processes(now, rows)
                if containers:
                    self.store.add_containers(now, [c.to_json() for c in containers])
            self.store.prune(now)
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the agent
            if "store" not in self.faults_now:
                log.error("history store: %s (retried every history interval)", exc)
            self.errors["store"] += 1
            self.faults_now["store"] = f"history store not writable: {exc}"
            return
        for rec in stored:  # only once written: a failed write is retried at the next scan
            rec.last_stored_t = now
        if rows:
            self.faults_now.pop("store", None)

    def cache_sizes(self) -> dict[str, int]:
        """Entries of every cache the agent holds: each has a bound and an eviction rule (the per-pid
        state goes with its pid, dead pids after dead_grace_s, the rest by size)."""
        out = cachestats.sizes()
        out.update({"processes": len(self.procs), "dead_processes": len(self.dead),
                    "containers": len(self.containers), "native_site_pids": len(self.sites),
                    "error_log": len(self.error_log)})
        if self.faults is not None:
            with contextlib.suppress(Exception):
                out.update(self.faults.sizes())
        index = getattr(self.pod_meta, "index", None)
        if index is not None:  # pod containers of this node; deleted ones retained a while, then dropped
            out["pod_containers"] = len(index)
        return out

    def _capped(self) -> list[_Proc]:
        withbd = [r for r in self.procs.values() if r.last is not None]
        tracked = [r for r in withbd if r.pid in self.cfg.track]
        rest = sorted((r for r in withbd if r.pid not in self.cfg.track), key=lambda r: -r.rss_bytes)
        return tracked + rest[: self.cfg.top_k]

    def _publish(self, now: float, containers: list[ContainerView], dur: float, cpu: float) -> AgentView:
        procs = tuple(ProcessView(r.last, self.labels(r.last.container), dict(r.growth),
                                  r.pid in self.cfg.track, r.rss_bytes)
                      for r in self._capped() if r.last is not None)
        bpf_stats: dict[str, dict[str, int]] = {}
        for name, src in (("oom_kill", self.oom_bpf), ("page_faults", self.faults)):
            if src is not None:
                try:
                    bpf_stats[name] = src.stats()
                except Exception:  # noqa: BLE001
                    self.errors[f"bpf-{name}"] += 1
        view = AgentView(
            time=now, scans_total=self.scans, processes=procs, containers=tuple(containers),
            oom_kills=dict(self.oom_kills), last_scan_duration_s=dur, last_scan_cpu_s=cpu,
            scan_duration_sum_s=self.scan_duration_sum, processes_seen=len(self.procs),
            full_snapshots_total=self.full_total, deferred_total=self.deferred_total,
            errors_by_source=dict(self.errors), bpf_stats=bpf_stats, degraded=dict(self.degraded),
            sites={p.breakdown.pid: self.sites[p.breakdown.pid] for p in procs if p.breakdown.pid in self.sites},
            evidence_total=dict(self.evidence_total), vanished_total=dict(self.vanished),
            scan_overruns_total=self.scan_overruns, faults=dict(self.faults_now), notices=tuple(self.notices),
            recent_errors=tuple({"time": t, "source": src, "pid": pid, "detail": d}
                                for t, src, pid, d in list(self.error_log)[-10:]),
            evidence_pending=len(self.pending_evidence), evidence_dropped_total=self.evidence_dropped,
            cache_sizes=self.cache_sizes())
        with self._view_lock:
            self._view = view
        return view
