"""The DaemonSet's capability set is the least that works (issue 5), shown on the real kernel.

A probe runs as uid 0 with exactly the capabilities the rendered DaemonSet adds (setpriv: bounding,
permitted and effective sets, no_new_privs as allowPrivilegeEscalation: false sets it) against a
process and a file of another user, doing what the agent does: read smaps, open through
/proc/PID/map_files, enter /proc/PID/root, read a 0600 file, signal, switch euid/egid, create a BPF
map, load a tracepoint BPF program and attach it. With the full set everything works; removing any
one capability breaks exactly the operations its comment in deploy/base/daemonset.yaml names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SETPRIV = shutil.which("setpriv")
NOBODY = 65534

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to a chosen capability set"),
    pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) missing"),
]

# Which operations each capability exists for (the reasons in the DaemonSet's comments). Reading
# smaps/maps (mm access) is granted by CAP_PERFMON as well as CAP_SYS_PTRACE, so no single removal
# breaks it; removing both does (test below).
NEEDED_FOR = {
    "BPF": {"bpf_map", "bpf_prog", "tracepoint_attach"},
    "PERFMON": {"bpf_prog", "tracepoint_attach"},
    "SYS_PTRACE": {"proc_root", "map_files", "task_syscall", "ptrace_seize"},
    "CHECKPOINT_RESTORE": {"map_files"},
    "DAC_READ_SEARCH": {"read_0600", "map_files", "task_syscall"},  # both are mode 0[45]00 of the owner
    "KILL": {"signal"},
    "SETUID": {"seteuid"},
    "SETGID": {"setegid"},
}
OPERATIONS = set().union(*NEEDED_FOR.values()) | {"smaps"}

PROBE = r'''
import ctypes, errno, json, os, struct, sys

pid, map_range, secret, tp_id_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF, SYS_PERF_EVENT_OPEN = 321, 298  # x86_64
result = {}

def attempt(name, fn):
    try:
        fn()
        result[name] = "ok"
    except OSError as exc:
        result[name] = errno.errorcode.get(exc.errno, str(exc.errno))

def check(ret):
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret

def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), 128)
    return check(libc.syscall(SYS_BPF, cmd, buf, 128))

def map_create():
    os.close(bpf(0, struct.pack("<IIII", 2, 4, 4, 1)))  # BPF_MAP_CREATE, ARRAY 4/4/1

insns = ctypes.create_string_buffer(struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0))
license_ = ctypes.create_string_buffer(b"GPL")

def prog_load():
    # BPF_PROG_LOAD of a BPF_PROG_TYPE_TRACEPOINT program: r0 = 0; exit
    return bpf(5, struct.pack("<IIQQ", 5, 2, ctypes.addressof(insns), ctypes.addressof(license_)))

def prog():
    os.close(prog_load())

def attach():
    prog_fd = prog_load()
    attr = bytearray(128)
    struct.pack_into("<IIQQ", attr, 0, 2, 128, int(open(tp_id_file).read()), 1)  # TRACEPOINT
    struct.pack_into("<I", attr, 48, 1)  # wakeup_events
    buf = ctypes.create_string_buffer(bytes(attr), 128)
    fd = check(libc.syscall(SYS_PERF_EVENT_OPEN, buf, -1, 0, -1, 8))  # all tasks on cpu 0
    try:
        check(libc.ioctl(fd, 0x40042408, prog_fd))  # PERF_EVENT_IOC_SET_BPF
    finally:
        os.close(fd)
        os.close(prog_fd)

def seize():
    # the in-process sampler's way in (nativewatch/inject/ptrace.py): SEIZE, then let go at once
    if libc.ptrace(0x4206, pid, None, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    libc.ptrace(17, pid, None, None)

def seteuid():
    os.seteuid(65534)
    os.seteuid(0)

def setegid():
    os.setegid(65534)
    os.setegid(0)

attempt("smaps", lambda: open(f"/proc/{pid}/smaps", "rb").read())
attempt("map_files", lambda: os.close(os.open(f"/proc/{pid}/map_files/{map_range}", os.O_RDONLY)))
attempt("proc_root", lambda: os.listdir(f"/proc/{pid}/root/"))
attempt("task_syscall", lambda: open(f"/proc/{pid}/task/{pid}/syscall", "rb").read())
attempt("read_0600", lambda: open(secret, "rb").read())
attempt("signal", lambda: os.kill(pid, 0))
attempt("ptrace_seize", seize)
attempt("seteuid", seteuid)
attempt("setegid", setegid)
attempt("bpf_map", map_create)
attempt("bpf_prog", prog)
attempt("tracepoint_attach", attach)
print(json.dumps(result))
'''


def daemonset_capabilities() -> set[str]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "base")], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    ds = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet")
    sc = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
    return set(sc["capabilities"]["add"])


def with_caps(caps: set[str], argv: list[str]) -> list[str]:
    spec = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(caps))])
    return [SETPRIV, "--bounding-set", spec, "--inh-caps", "-all", "--ambient-caps", "-all",
            "--no-new-privs", "--", *argv]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A process and a 0600 file owned by another user (nobody), as other pods' would be."""
    tp_id = Path("/sys/kernel/tracing/events/oom/mark_victim/id")
    if not tp_id.exists():
        tp_id = Path("/sys/kernel/debug/tracing/events/oom/mark_victim/id")
    if not tp_id.exists():
        pytest.skip("tracefs with oom:mark_victim not available")
    d = tmp_path_factory.mktemp("privs")
    secret = d / "hsperfdata-like"
    secret.write_bytes(b"owned by another user, mode 0600")
    os.chown(secret, NOBODY, NOBODY)
    secret.chmod(0o600)
    proc = subprocess.Popen([SETPRIV, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                             "sleep", "600"])
    try:
        for _ in range(200):
            try:
                if Path(f"/proc/{proc.pid}/exe").resolve().name == "sleep":
                    break
            except OSError:
                pass
            subprocess.run(["sleep", "0.01"], check=False)
        maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
        map_range = next(line.split()[0] for line in maps if line.split()[-1].endswith("/sleep"))
        script = d / "probe.py"
        script.write_text(PROBE)
        yield {"pid": proc.pid, "range": map_range, "secret": str(secret), "tp_id": str(tp_id),
               "script": str(script)}
    finally:
        proc.kill()
        proc.wait()


def probe(target: dict, caps: set[str]) -> dict[str, str]:
    out = subprocess.run(with_caps(caps, [sys.executable, "-I", target["script"], str(target["pid"]),
                                          target["range"], target["secret"], target["tp_id"]]),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_probe_matches_the_reasons_table():
    assert daemonset_capabilities() == set(NEEDED_FOR)


def test_the_daemonset_capability_set_is_enough(target):
    got = probe(target, daemonset_capabilities())
    assert got == dict.fromkeys(OPERATIONS, "ok")


def test_without_capabilities_nothing_works(target):
    """The probe can fail: uid 0 alone, with no capabilities, is refused everything."""
    got = probe(target, set())
    assert all(v != "ok" for v in got.values()), got


@pytest.mark.parametrize("cap", sorted(NEEDED_FOR))
def test_each_capability_is_needed_for_what_its_comment_says(target, cap):
    got = probe(target, daemonset_capabilities() - {cap})
    failing = {op for op, v in got.items() if v != "ok"}
    assert failing == NEEDED_FOR[cap], got
    assert all(got[op] in ("EPERM", "EACCES") for op in failing), got


def test_reading_smaps_needs_sys_ptrace_or_perfmon(target):
    got = probe(target, daemonset_capabilities() - {"SYS_PTRACE", "PERFMON"})
    assert got["smaps"] in ("EACCES", "EPERM"), got


def snapshot(target: dict, caps: set[str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nativewatch"
    argv = [str(exe), "snapshot", "--pid", str(target["pid"]), "--json"]
    return subprocess.run(with_caps(caps, argv), capture_output=True, text=True, timeout=120)


def test_snapshot_of_another_users_process_works_with_exactly_these_capabilities(target):
    out = snapshot(target, daemonset_capabilities())
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["pid"] == target["pid"] and snap["comm"] == "sleep"
    assert snap["rss_bytes"] > 0 and sum(snap["categories"].values()) == snap["rss_bytes"]
    assert not [p for p in snap["problems"] if "CAP_" in p or "denied" in p.lower()], snap["problems"]


@pytest.fixture
def threaded_target():
    """Another user's process with two threads: its second thread's stack needs a stack pointer read
    (a one-thread process has only [stack], so nothing would degrade)."""
    proc = subprocess.Popen([SETPRIV, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                             "/usr/bin/python3", "-c", "import threading, time; threading.Thread("
                             "target=time.sleep, args=(600,), daemon=True).start(); print('ready', flush=True); "
                             "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield {"pid": proc.pid}
    finally:
        proc.kill()
        proc.wait()


def test_snapshot_degrades_without_sys_ptrace_and_fails_without_mm_access(target, threaded_target):
    degraded = snapshot(threaded_target, daemonset_capabilities() - {"SYS_PTRACE"})
    assert degraded.returncode == 0, degraded.stderr
    assert any("CAP_SYS_PTRACE" in p for p in json.loads(degraded.stdout)["problems"])
    denied = snapshot(target, daemonset_capabilities() - {"SYS_PTRACE", "PERFMON"})
    assert denied.returncode != 0
    assert "permission denied" in (denied.stderr + denied.stdout).lower()
