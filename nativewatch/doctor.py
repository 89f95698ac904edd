"""Environment checks for `nativewatch doctor`: what works here, what is degraded, and what to do."""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

__all__ = ["Check", "run_checks", "OK", "DEGRADED", "MISSING"]

OK, DEGRADED, MISSING = "ok", "degraded", "missing"

# What the agent needs, each for one job (deploy/ says the same beside the DaemonSet's list).
_CAPS = {"CAP_DAC_READ_SEARCH": 2, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SYS_PTRACE": 19,
         "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40}
_CAP_SYS_ADMIN = 21
_CAP_WHY = {
    "CAP_DAC_READ_SEARCH": "read other users' /proc/PID/map_files and task/TID/syscall",
    "CAP_KILL": "send SIGQUIT to a verified JVM to start its attach listener",
    "CAP_SETGID": "connect to a JVM's attach socket with the JVM's own group",
    "CAP_SETUID": "connect to a JVM's attach socket with the JVM's own user",
    "CAP_SYS_PTRACE": "read other processes' smaps, mem and pagemap",
    "CAP_PERFMON": "attach uprobes and tracepoints",
    "CAP_BPF": "load eBPF programs and maps",
    "CAP_CHECKPOINT_RESTORE": "follow /proc/PID/map_files links to a container's binaries",
}
_BPF_MAP_CREATE = 0
_NR_BPF = 321  # x86_64


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _tracefs() -> str | None:
    for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(f"{p}/events"):
            return p
    return None


def check_bpf_syscall() -> Check:
    # Create (and close) a one-entry array map: proves the bpf() syscall is allowed for us.
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = 2, 4, 4, 1  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    fd = libc.syscall(_NR_BPF, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return Check("bpf syscall", OK, "bpf() map creation works")
    err = ctypes.get_errno()
    return Check("bpf syscall", MISSING, f"bpf() failed: {os.strerror(err)}",
                 "run as root or grant CAP_BPF+CAP_PERFMON; check kernel.unprivileged_bpf_disabled and seccomp")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the same thing to the user
        return Check("bcc", MISSING, f"cannot import bcc: {exc}",
                     "apt-get install python3-bpfcc bpfcc-tools, and use a venv made with --system-site-packages")
    return Check("bcc", OK, "python bcc module importable")


def check_uprobes() -> Check:
    if os.path.exists("/sys/bus/event_source/devices/uprobe/type"):
        return Check("uprobes", OK, "uprobe PMU present (probes are file-descriptor bound, cleaned up on exit)")
    tf = _tracefs()
    if tf and os.path.exists(f"{tf}/uprobe_events"):
        return Check("uprobes", DEGRADED, "only tracefs uprobe_events (probes may outlive a killed process)",
                     "use a kernel >= 4.17 with CONFIG_UPROBE_EVENTS")
    return Check("uprobes", MISSING, "no uprobe support: `profile` and auto-capture are unavailable",
                 "kernel needs CONFIG_UPROBES and CONFIG_UPROBE_EVENTS")


def check_attach() -> Check:
    """Which rung of the attach ladder allocation tracing gets here, and what that costs."""
    from nativewatch.malloc_profile.attach import RUNG_COST, RUNG_KERNEL, RUNGS, supported_rungs

    support = supported_rungs()
    ok = [s.rung for s in support if s.ok]
    if not ok:
        return Check("attach", MISSING, "allocation probes cannot attach: "
                     + "; ".join(f"{s.rung}: {s.reason}" for s in support),
                     "`profile` and auto-capture need kernel >= 4.17 with uprobes, and root")
    best = ok[0]
    detail = f"`profile` attaches via {best} ({RUNG_COST[best]}); also available: {', '.join(ok[1:]) or 'none'}"
    if best == RUNGS[0]:
        return Check("attach", OK, detail)
    return Check("attach", DEGRADED, detail + f"; {RUNGS[0]} needs kernel >= {RUNG_KERNEL[RUNGS[0]]}",
                 "captures still work; on an allocation-heavy target they reach the overhead budget sooner")


def check_inject() -> Check:
    """Whether `profile --via auto` (and auto-capture) may put the in-process sampler into a process,
    or falls back to uprobes, and why."""
    import mmap

    from nativewatch.inject.capture import ENV_NO_INJECT, injection_allowed

    fallback = "captures then use uprobes: ~1 us per allocator call instead of ~6 ns"
    ok, why = injection_allowed()
    if not ok:
        fix = (f"unset {ENV_NO_INJECT} to allow it" if ENV_NO_INJECT in why else
               "run scripts/setup.sh (it builds nativewatch/inject/nwsampler.so)")
        return Check("inject", DEGRADED, f"in-process sampling not allowed: {why}; {fallback}", fix)
    if not _cap_eff() >> _CAPS["CAP_SYS_PTRACE"] & 1:
        return Check("inject", DEGRADED, f"in-process sampling needs CAP_SYS_PTRACE; {fallback}",
                     "run as root or grant CAP_SYS_PTRACE")
    if _yama_scope() == 3:
        return Check("inject", DEGRADED, f"Yama ptrace_scope 3 forbids ptrace until reboot; {fallback}")
    try:
        m = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            m.madvise(18)  # MADV_WIPEONFORK: a forked child must see the sampler off
        finally:
            m.close()
    except (OSError, AttributeError, ValueError) as exc:
        return Check("inject", DEGRADED, f"kernel lacks MADV_WIPEONFORK ({exc}, needs >= 4.14); {fallback}")
    return Check("inject", OK, "`profile --via auto` and auto-capture put the in-process sampler into dynamically "
                 "linked processes (a stop of a few ms; every patched GOT entry restored at the end); "
                 f"static binaries, Go without cgo and traced processes get uprobes; {ENV_NO_INJECT}=1, "
                 "--no-inject or the agent's `inject = false` turn it off")


def check_tracefs() -> Check:
    tf = _tracefs()
    if tf is None:
        return Check("tracefs", MISSING, "tracefs not mounted: tracepoints (OOM kills, page faults) unavailable",
                     "mount -t tracefs nodev /sys/kernel/tracing")
    missing = [tp for tp in ("exceptions/page_fault_user", "oom/mark_victim")
               if not os.path.isdir(f"{tf}/events/{tp}")]
    if missing:
        return Check("tracefs", DEGRADED, f"{tf} mounted; missing tracepoints: {', '.join(missing)}",
                     "OOM kills are then detected from cgroup memory.events/oom_control")
    return Check("tracefs", OK, f"{tf}: exceptions:page_fault_user and oom:mark_victim available")


def check_btf() -> Check:
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        return Check("btf", OK, "/sys/kernel/btf/vmlinux present")
    return Check("btf", DEGRADED, "no kernel BTF (not needed by nativewatch's uprobe/tracepoint programs)",
                 "CONFIG_DEBUG_INFO_BTF=y kernels expose /sys/kernel/btf/vmlinux")


def check_headers() -> Check:
    rel = platform.release()
    build = f"/lib/modules/{rel}/build"
    if os.path.isdir(f"{build}/include"):
        target = os.path.realpath(build)
        generic = not os.path.basename(target).startswith(f"linux-headers-{rel}")
        note = f" -> {target}" + (" (generic headers: fine for uprobe/tracepoint programs)" if generic else "")
        return Check("kernel headers", OK, f"{build}{note}")
    import glob

    cands = sorted(glob.glob("/usr/src/linux-headers-*-amd64"))
    fix = ("no headers for this kernel; bcc compiles probes against kernel headers. uprobe and tracepoint "
           "programs only need generic ones: apt-get install linux-headers-amd64, then "
           f"ln -s /usr/src/linux-headers-<ver>-amd64 {build} and ln -s /usr/src/linux-headers-<ver>-common "
           f"/lib/modules/{rel}/source (scripts/setup.sh does this)")
    detail = f"{build} missing" + (f"; installed: {', '.join(cands)}" if cands else "")
    return Check("kernel headers", MISSING, detail, fix)


def _cap_eff() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_capabilities() -> Check:
    eff = _cap_eff()
    admin = bool(eff >> _CAP_SYS_ADMIN & 1)
    have = [n for n, b in _CAPS.items() if eff >> b & 1]
    # CAP_SYS_ADMIN covers BPF, PERFMON and CHECKPOINT_RESTORE on kernels that split them out.
    covered = {"CAP_BPF", "CAP_PERFMON", "CAP_CHECKPOINT_RESTORE"} if admin else set()
    lacking = [n for n in _CAPS if n not in have and n not in covered]
    if not lacking:
        return Check("capabilities", OK, "all needed: " + ", ".join(have + (["CAP_SYS_ADMIN"] if admin else [])))
    essential = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    status = MISSING if essential & set(lacking) else DEGRADED
    detail = f"have {', '.join(have) or 'none'}; lacking " + "; ".join(f"{n} ({_CAP_WHY[n]})" for n in lacking)
    return Check("capabilities", status, detail,
                 "run as root, or grant the capabilities listed in deploy/ (each has its reason there)")


def check_cgroup() -> Check:
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [ln.split() for ln in fh]
    except OSError as exc:
        return Check("cgroup", MISSING, f"cannot read mounts: {exc}")
    v2 = [m[1] for m in mounts if len(m) > 2 and m[2] == "cgroup2"]
    v1mem = [m[1] for m in mounts if len(m) > 3 and m[2] == "cgroup" and "memory" in m[3].split(",")]
    if v1mem and v2:
        return Check("cgroup", OK, f"hybrid: v1 memory controller at {v1mem[0]}, cgroup2 at {v2[0]}")
    if v1mem:
        return Check("cgroup", OK, f"v1: memory controller at {v1mem[0]}")
    if v2:
        return Check("cgroup", OK, f"v2 (unified) at {v2[0]}")
    return Check("cgroup", DEGRADED, "no cgroup memory controller mounted: container limits unavailable",
                 "mount cgroup2 at /sys/fs/cgroup (or the v1 memory controller)")


def check_procfs() -> Check:
    try:
        with open("/proc/self/smaps_rollup", "rb"):
            pass
    except OSError as exc:
        return Check("procfs", MISSING, f"/proc/self/smaps_rollup unreadable: {exc}", "mount procfs at /proc")
    if not os.access("/proc/1/smaps", os.R_OK):
        return Check("procfs", DEGRADED, "cannot read other processes' smaps",
                     "run as root or with CAP_SYS_PTRACE; in a pod use hostPID: true")
    return Check("procfs", OK, "smaps and smaps_rollup readable for other processes")


def _yama_scope() -> int | None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def check_process_memory() -> Check:
    """Node's V8 pages and CPython's arena table are read through /proc/PID/mem: the kernel allows it
    only with ptrace-read access, which Yama's ptrace_scope can narrow or forbid."""
    from nativewatch.errors import NativewatchError
    from nativewatch.sources.procfs import read_maps
    from nativewatch.sources.procmem import ProcMem

    # a process that is not our descendant (Yama scope 1 lets anyone read their own children): the
    # parent first, then any other user-space process
    me = os.getpid()
    others = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) not in (me, os.getppid())]
    ok, error = False, None
    for target in [os.getppid(), *sorted(others)][:64]:
        try:
            readable = [m for m in read_maps(target).mappings if m.perms.startswith("r")]
        except (NativewatchError, OSError):
            continue
        if not readable:
            continue  # a kernel thread
        start = readable[0].start
        with ProcMem(target, max_reads=1) as mem:
            ok = mem.read(start, 8) is not None
            error = mem.error
        break
    scope = _yama_scope()
    where = f" (Yama ptrace_scope {scope})" if scope is not None else ""
    if ok:
        return Check("process memory", OK, f"/proc/PID/mem readable for other processes{where}: Node (V8 pages) "
                     "and Python (pymalloc arenas) heaps are found")
    why = error or "no other process whose maps are readable"
    fix = ("Yama ptrace_scope 3 forbids it for everyone until reboot" if scope == 3 else
           "run as root or with CAP_SYS_PTRACE (Yama ptrace_scope 1-2 allows it then); in a pod use hostPID: true")
    return Check("process memory", DEGRADED, f"cannot read other processes' memory ({why}){where}: Node and Python "
                 "heaps count as native", fix)


def run_checks() -> list[Check]:
    return [check_procfs(), check_capabilities(), check_process_memory(), check_bpf_syscall(), check_bcc(),
            check_headers(), check_uprobes(), check_attach(), check_inject(), check_tracefs(), check_btf(), check_cgroup()]
