"""doctor, units and the plain tables (issue 2)."""

from __future__ import annotations

import contextlib
import json
import os
import platform

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nativewatch.units import human_bytes, parse_bytes, parse_duration


def test_doctor_reports_every_check_with_a_status(nativewatch_cli):
    r = nativewatch_cli("doctor", "--json", check=True)
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert set(checks) == {"procfs", "capabilities", "process memory", "bpf syscall", "bcc", "kernel headers",
                           "uprobes", "attach", "inject", "tracefs", "btf", "cgroup"}
    for c in checks.values():
        assert c["status"] in ("ok", "degraded", "missing")
        if c["status"] != "ok":
            assert c["fix"], c
    # Ground truth from this machine's own files.
    headers_ok = os.path.isdir(f"/lib/modules/{platform.release()}/build/include")
    assert (checks["kernel headers"]["status"] == "ok") == headers_ok
    assert (checks["btf"]["status"] == "ok") == os.path.exists("/sys/kernel/btf/vmlinux")
    assert checks["process memory"]["status"] == "ok"  # root here: other processes' /proc/PID/mem reads
    text = nativewatch_cli("doctor", check=True).stdout
    assert "kernel headers" in text and "cgroup" in text


def test_doctor_as_unprivileged_user_says_what_is_missing(nativewatch_cli):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "nativewatch"
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        str(exe), "doctor", "--json"], capture_output=True, text=True, timeout=60)
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["capabilities"]["status"] == "missing"
    assert checks["bpf syscall"]["status"] == "missing"
    assert "CAP_BPF" in checks["bpf syscall"]["fix"]
    # nobody cannot read root's processes: V8 and pymalloc heaps are not found, and doctor says so
    assert checks["process memory"]["status"] == "degraded" and "CAP_SYS_PTRACE" in checks["process memory"]["fix"]


@pytest.mark.parametrize("text,value", [("512KiB", 512 * 1024), ("2MiB", 2 << 20), ("1GB", 10**9),
                                        ("100", 100), ("1.5 MiB", 3 << 19)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text,value", [("30s", 30), ("2m", 120), ("1h30m", 5400), ("90", 90),
                                        ("250ms", 0.25)])
def test_parse_duration(text, value):
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "x", "5 parsecs", "1h x"])
def test_bad_durations_raise_value_error(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(-3 << 20) == "-3.0 MiB"


@given(st.text(max_size=20))
def test_unit_parsers_raise_only_value_error(text):
    for fn in (parse_bytes, parse_duration):
        with contextlib.suppress(ValueError):
            fn(text)


def test_snapshot_of_invalid_duration_option_is_a_usage_error(nativewatch_cli):
    r = nativewatch_cli("snapshot")
    assert r.returncode == 2 and "--pid" in r.stderr
