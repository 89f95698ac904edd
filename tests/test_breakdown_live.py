"""Real processes holding known amounts, broken down through the CLI and checked against the truth.

Issue 2 (foundation). Tolerances, from measuring the programs here:
- every category the program fills gets at least what was touched (the kernel cannot make those pages
  non-resident without swap, and there is none);
- on top of that, a C process has a baseline: ~0.2 MiB of native (libc/ld.so .data/.bss, stdio buffers,
  TLS), ~3 MiB of file pages (the binary, libc, ld.so), and its main [stack] (~0.1 MiB). So the upper
  bound is truth + 1 MiB for native/thread and truth + 4 MiB for file; shmem is exact to a page.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, build_c, build_go

MIB = 1024 * 1024


def _start(cmd: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("READY"):
        p.kill()
        raise AssertionError(f"{cmd[0]} did not start: {line!r}")
    return p, line


@pytest.fixture(scope="module")
def holdings(tmp_path_factory):
    exe = build_c("holdings.c", cflags=["-O1", "-pthread"])
    data = tmp_path_factory.mktemp("file") / "data.bin"
    data.write_bytes(os.urandom(16 * MIB))
    p, _ = _start([str(exe), "40", "24", "8", "512", str(data), "16", "12", "4"])
    yield p.pid
    p.kill()
    p.wait()


def test_c_program_categories_match_what_it_holds(holdings, nativewatch_cli):
    out = nativewatch_cli("snapshot", "--pid", str(holdings), "--json", check=True)
    snap = json.loads(out.stdout)
    cats = snap["categories"]
    assert sum(cats.values()) == snap["rss_bytes"]
    assert snap["runtime"] == "native"
    assert snap["threads"] == 9
    # 40 MiB malloc'd in 64 KiB chunks + 24 MiB anonymous mmap
    assert 64 * MIB <= cats["native"] <= 65 * MIB
    # 8 threads x 512 KiB touched + the main thread's [stack]
    assert 4 * MIB <= cats["thread"] <= 5 * MIB
    # 16 MiB of the file read through a private read-only mapping, plus binary and libraries
    assert 16 * MIB <= cats["file"] <= 20 * MIB
    # 12 MiB of /dev/shm + 4 MiB memfd, touched through shared mappings
    assert 16 * MIB <= cats["shmem"] <= 16 * MIB + 8192
    for c in ("heap", "metaspace", "direct", "code", "gc", "runtime"):
        assert cats[c] == 0
    assert snap["memory"]["allocator"] == "glibc"
    assert snap["memory"]["malloc_arena_rss_bytes"] >= 40 * MIB  # the [heap] (main arena)


def test_snapshot_json_contract_keys(holdings, nativewatch_cli):
    snap = json.loads(nativewatch_cli("snapshot", "--pid", str(holdings), "--json", check=True).stdout)
    for key in ("pid", "comm", "runtime", "rss_bytes", "categories", "threads", "sources", "container"):
        assert key in snap
    assert set(snap["categories"]) == {"heap", "metaspace", "thread", "direct", "code", "gc", "runtime",
                                       "native", "file", "shmem"}
    assert snap["pid"] == holdings
    assert snap["comm"].startswith("holdings")
    assert snap["container"] is None
    assert "smaps" in snap["sources"]


def test_thread_stacks_found_from_stack_pointers_not_guard_pages(holdings):
    from nativewatch.snapshot import gather_facts

    facts = gather_facts(holdings)
    stacks = [s for s in facts.attribution.shares if s.kind == "thread-stack"]
    # 8 pthread stacks + [stack]; no guard page (---p, never resident) is counted as a stack
    assert len(stacks) == 9
    assert all(not s.mapping.perms.startswith("---") for s in stacks)
    assert not any("guard pages" in p for p in facts.attribution.problems)


def test_text_output_uses_readable_units(holdings, nativewatch_cli):
    out = nativewatch_cli("snapshot", "--pid", str(holdings), check=True).stdout
    assert "MiB" in out and "native" in out and "thread" in out


@pytest.fixture(scope="module")
def go_program(tmp_path_factory):
    out = build_go("goholdings", cgo=True)
    p, line = _start([str(out), "100", "32"])
    stats = dict(kv.split("=") for kv in line.split()[2:])
    yield p.pid, {k: int(v) for k, v in stats.items()}
    p.kill()
    p.wait()


def test_go_heap_arenas_match_memstats_and_cgo_malloc_is_native(go_program, nativewatch_cli):
    pid, ms = go_program
    snap = json.loads(nativewatch_cli("snapshot", "--pid", str(pid), "--json", check=True).stdout)
    cats = snap["categories"]
    assert snap["runtime"] == "go"
    assert sum(cats.values()) == snap["rss_bytes"]
    # Resident arena pages = in-use heap spans + stack spans + idle spans not yet returned to the OS.
    # The scavenger may release a few idle pages between ReadMemStats and our read: allow 2% or 1 MiB.
    expected = ms["HeapInuse"] + ms["StackInuse"] + (ms["HeapIdle"] - ms["HeapReleased"])
    assert abs(cats["heap"] - expected) <= max(0.02 * expected, MIB), (cats["heap"], expected)
    assert cats["heap"] >= 100 * MIB
    # 32 x 1 MiB C.malloc'd and memset through cgo
    assert 32 * MIB <= cats["native"] <= 40 * MIB


def test_every_process_sums_exactly_to_smaps_rss():
    from nativewatch.errors import AccessDenied, ProcessGone
    from nativewatch.snapshot import gather_facts
    from nativewatch.sources import procfs

    checked = 0
    for pid in procfs.list_pids():
        try:
            facts = gather_facts(pid)
        except (ProcessGone, AccessDenied):
            continue
        assert sum(facts.attribution.categories.values()) == facts.smaps.rss, pid
        checked += 1
    assert checked >= 5


def test_vanished_pid_is_a_one_line_error(nativewatch_cli):
    p = subprocess.Popen(["sleep", "0"])
    p.wait()
    r = nativewatch_cli("snapshot", "--pid", str(p.pid))
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "no such process" in r.stderr


def test_bad_pid_is_rejected(nativewatch_cli):
    r = nativewatch_cli("snapshot", "--pid", "-5")
    assert r.returncode != 0 and "invalid pid" in r.stderr


def test_unreadable_process_reports_permission_problem(holdings, nativewatch_cli):
    # Drop to an unprivileged uid: another user's smaps is not readable.
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(Path(ROOT / ".venv" / "bin" / "nativewatch")), "snapshot", "--pid", str(holdings)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "permission denied" in r.stderr and r.stderr.strip().count("\n") == 0


def test_processes_exiting_mid_scan_are_skipped():
    from nativewatch.scan import scan_all

    procs = [subprocess.Popen(["sleep", "0.05"]) for _ in range(20)]
    bds, errors = scan_all()
    for p in procs:
        p.wait()
    assert "attribution" not in errors
    assert bds


def test_top_once_lists_the_process_with_its_categories(holdings, nativewatch_cli):
    r = nativewatch_cli("top", "--once", "--json", "--limit", "0", check=True)
    procs = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
    assert holdings in procs
    assert procs[holdings]["categories"]["shmem"] == 16 * MIB
    table = nativewatch_cli("top", "--once", "--sort", "pid", "--limit", "0", check=True).stdout
    assert str(holdings) in table and "NATIVE" in table.splitlines()[0]


