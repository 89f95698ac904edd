"""`nativewatch soak` against real processes it starts (issue 4).

- a C program leaking 2 MiB/s of malloc'd memory must fail, naming `native`, with the measured slope
  near the true rate: each 256 KiB chunk is above glibc's mmap threshold, so it is its own mapping of
  65 pages (64 + glibc's chunk header rounded to a page), i.e. 2.03 MiB/s resident. Samples are 1 s
  apart and the fit is Theil-Sen over floor points a few seconds apart, so scheduling jitter of a few
  ms moves the slope by well under 5%; the bounds are 1.9-2.2 MiB/s;
- a C program whose native memory is a 48 MiB sawtooth must pass, and the test checks that the teeth
  were really there (so the pass is not vacuous);
- a JVM leaking NIO direct buffers must fail naming `direct` (needs nativewatch.jvm);
- the command's own failure fails the soak; a limit above the leak passes it.
The two C soaks run side by side to keep the wall time at one minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ROOT, build_c

MIB = 1024 * 1024


def _soak_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "nativewatch"
    return [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "nativewatch.cli"]),
            "soak", *args]


def _finish(p: subprocess.Popen, timeout: float = 180) -> tuple[int, dict, str]:
    out, err = p.communicate(timeout=timeout)
    try:
        return p.returncode, json.loads(out), err
    except json.JSONDecodeError as exc:
        raise AssertionError(f"soak printed no JSON (rc {p.returncode}): {out!r}\n{err}") from exc


@pytest.mark.slow
def test_soak_fails_on_native_leak_and_passes_on_sawtooth(tmp_path):
    leak = build_c("soak_leak.c", cflags=["-O1"])
    saw = build_c("soak_sawtooth.c", cflags=["-O1"])
    chart = tmp_path / "leak.svg"
    common = ["--duration", "60s", "--interval", "1s", "--warmup", "6s", "--json", "--quiet"]
    p_leak = subprocess.Popen(_soak_cmd(*common, "--chart", str(chart), "--", str(leak), "2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p_saw = subprocess.Popen(_soak_cmd(*common, "--", str(saw), "48", "3", "2"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc_leak, j_leak, err_leak = _finish(p_leak)
    rc_saw, j_saw, err_saw = _finish(p_saw)

    assert rc_leak == 1, err_leak
    assert j_leak["verdict"] == "fail"
    native = j_leak["categories"]["native"]
    assert native["exceeded"] is True
    assert 1.9 * MIB <= native["slope_bytes_per_second"] <= 2.2 * MIB
    assert native["limit_bytes_per_second"] == pytest.approx(5e6 / 3600)
    assert native["fit"] >= 0.75
    assert [c for c, r in j_leak["categories"].items() if r["exceeded"]] == ["native"]
    assert j_leak["failures"][0].startswith("native: floor rising")
    assert j_leak["exit_status"] is None  # soak stopped it; it did not fail on its own
    assert 55 <= j_leak["samples"] <= 62
    # Ground truth from the series itself: 60 s at 2.03 MiB/s is ~120 MiB more native memory.
    series = j_leak["series"]["native"]
    assert 110 * MIB <= series[-1] - series[0] <= 130 * MIB

    root = ET.fromstring(chart.read_text())
    ids = {el.get("id") for el in root.iter()}
    assert {"series-native", "floor-native", "warmup"} <= ids

    assert rc_saw == 0, err_saw
    assert j_saw["verdict"] == "pass" and j_saw["failures"] == []
    assert j_saw["categories"]["native"]["exceeded"] is False
    swing = j_saw["series"]["native"]
    assert max(swing) - min(swing) >= 24 * MIB  # the teeth were there
    troughs = sum(1 for a, b in zip(swing, swing[1:], strict=False) if b < a - 16 * MIB)
    assert troughs >= 8  # ~12 teeth in 60 s


def test_soak_fails_when_the_command_fails(nativewatch_cli):
    r = nativewatch_cli("soak", "--duration", "30s", "--interval", "0.25s", "--warmup", "0s", "--json",
                        "--quiet", "--", "/bin/sh", "-c", "sleep 3; exit 3", timeout=60)
    assert r.returncode == 1, r.stderr
    j = json.loads(r.stdout)
    assert j["verdict"] == "fail" and j["exit_status"] == 3
    assert any("exited with status 3" in f for f in j["failures"])
    assert 2.5 <= j["elapsed_s"] < 10


def test_soak_of_a_pid_passes_when_the_limit_is_above_the_leak(nativewatch_cli):
    leak = build_c("soak_leak.c", cflags=["-O1"])
    p = subprocess.Popen([str(leak), "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("READY")
        r = nativewatch_cli("soak", "--pid", str(p.pid), "--duration", "8s", "--interval", "0.5s",
                            "--warmup", "1s", "--max-growth", "4MiB/s", "--quiet", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "PASS" in r.stdout and f"pid {p.pid} (soak_leak" in r.stdout
        assert p.poll() is None  # soak never stops a process it did not start
        r = nativewatch_cli("soak", "--pid", str(p.pid), "--duration", "8s", "--interval", "0.5s",
                            "--warmup", "1s", "--max-growth", "256KiB/s", "--quiet", timeout=60)
        assert r.returncode == 1 and "native: floor rising +1.0 MiB/s" in r.stdout, r.stdout
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("args", [
    ["--duration", "5s", "--pid", "1", "--", "true"],  # two targets
    ["--duration", "5s"],  # no target
    ["--duration", "5s", "--chart", "x.png", "--", "true"],  # PNG is refused before the run
    ["--duration", "5s", "--max-growth", "lots", "--", "true"],
    ["--duration", "5s", "--warmup", "10s", "--", "true"],
])
def test_soak_rejects_bad_usage_before_running(nativewatch_cli, args):
    r = nativewatch_cli("soak", *args, timeout=30)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip() and "Traceback" not in r.stderr


def test_soak_of_a_missing_pid_is_one_line(nativewatch_cli):
    r = nativewatch_cli("soak", "--pid", "999999999", "--duration", "2s", timeout=30)
    assert r.returncode == 1 and "no such process" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.jvm
@pytest.mark.slow
def test_soak_fails_on_jvm_direct_buffer_leak(tmp_path, nativewatch_cli):
    pytest.importorskip("nativewatch.jvm.attribute", reason="JVM support (nativewatch.jvm) not landed")
    java, javac = "/usr/bin/java", shutil.which("javac") or "/usr/bin/javac"
    if not os.path.exists(java) or not os.path.exists(javac):
        pytest.skip("Debian JDK 17 not installed (scripts/setup.sh installs it)")
    subprocess.run([javac, "-d", str(tmp_path), str(ROOT / "tests" / "java" / "SoakDirectLeak.java")],
                   check=True)
    r = nativewatch_cli("soak", "--duration", "50s", "--interval", "1s", "--warmup", "10s", "--json", "--quiet",
                        "--", java, "-XX:NativeMemoryTracking=summary", "-Xmx64m", "-XX:MaxDirectMemorySize=1g",
                        "-cp", str(tmp_path), "SoakDirectLeak", "2", timeout=180)
    assert r.returncode == 1, r.stderr
    j = json.loads(r.stdout)
    assert j["runtime"] == "jvm" and any(s.startswith("nmt") for s in j["sources"]), j["sources"]
    direct = j["categories"]["direct"]
    assert direct["exceeded"] is True, direct
    # 2 MiB/s of 256 KiB buffers; NMT counts each with a few bytes of malloc header.
    assert 1.7 * MIB <= direct["slope_bytes_per_second"] <= 2.4 * MIB
    assert any(f.startswith("direct: floor rising") for f in j["failures"])
