"""Java methods in the allocation sites of a JVM (issue 11, Java frames, the JIT part).

A real JVM leaks native memory from named Java methods (tests/java/SiteLeak.java): `leakUnsafe`
through Unsafe.allocateMemory, `leakDirect` through ByteBuffer.allocateDirect, 13 x 16 KiB every
~0.1 s while `nativewatch profile` runs (sampled, 5 s). `sitewarm` first runs both paths 20,000
times so the JIT has compiled them. The JVM's own perf map, asked for through attach
(Compiler.perfmap), must put the leaking method into the top site's frames on JDK 17, 21 and 25.
Those JVMs run with -XX:+PreserveFramePointer, as JVMs profiled with perf often do: C2-compiled code
otherwise keeps no frame pointer, and the frame-pointer walk ends at the first compiled frame. That
frame is still named (tested without the flag), but it is the leaking method only when the JIT inlined
the JDK's allocation path into it, which it decides run by run (compiled frames have no CFI: the stack
then ends with `[stack ends: no CFI]`).
Under -Xint every Java frame is an interpreter frame: the Method* it holds (read from the stack copy)
is named through the JVM's exported VMStructs. What cannot be named must say what it is: `[java: code
cache]` on JDK 11 (no Compiler.perfmap) and with --no-jvm (no attach), never a bare address.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))
from harness import Jvm, compile_programs, java_home, jvm_argv  # noqa: E402

pytestmark = [pytest.mark.jvm, pytest.mark.bpf]
MIB = 1 << 20


def _profile(major: int, step: str, flags: tuple[str, ...] = (), cli: tuple[str, ...] = ()) -> dict:
    if java_home(major) is None:
        pytest.fail(f"JDK {major} is part of the test machine (scripts/setup-test-jdks.sh)")
    jvm = Jvm(jvm_argv(major, compile_programs(), *flags))
    stop = threading.Event()
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            while not stop.is_set():
                jvm.step(f"{step} 13")
                stop.wait(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        jvm.step("sitewarm")
        t = threading.Thread(target=drive, daemon=True)
        t.start()
        exe = Path(sys.executable).parent / "nativewatch"
        r = subprocess.run([str(exe), "profile", "--pid", str(jvm.pid), "--duration", "5s", "--json", *cli],
                           capture_output=True, text=True, timeout=120)
        stop.set()
        t.join(30)
    finally:
        stop.set()
        jvm.close()
    assert not errors, errors
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    top = doc["sites"][0]
    print(f"JDK {major} {step} {flags} {cli}: {doc['java_frames']}; top {top['outstanding_bytes'] / MIB:.1f} MiB "
          f"{[f for f in top['frames'] if 'libjvm' not in f]}")
    # ~2 MiB/s of leak for ~5 s: the top site is the leak, whatever its frames say
    assert top["outstanding_bytes"] >= 4 * MIB, top
    assert not [f for f in top["frames"] if f.endswith("(?)")], top["frames"]
    return doc


@pytest.mark.parametrize("major,step,method", [
    (17, "siteunsafe", "SiteLeak.leakUnsafe(int)"),
    (17, "sitedirect", "SiteLeak.leakDirect(int)"),
    (21, "siteunsafe", "SiteLeak.leakUnsafe(int)"),
    (25, "sitedirect", "SiteLeak.leakDirect(int)"),
])
def test_the_leaking_jit_compiled_method_is_in_the_top_site(major, step, method, bpf_available):
    doc = _profile(major, step, flags=("-XX:+PreserveFramePointer",))
    frames = doc["sites"][0]["frames"]
    assert doc["java_frames"] == "Compiler.perfmap"
    assert any(method in f for f in frames), frames
    assert any(f.startswith("JavaMain (libjli.so)") for f in frames), frames  # through to the launcher


def test_without_preserved_frame_pointers_the_first_compiled_frame_is_named(bpf_available):
    doc = _profile(17, "siteunsafe")
    frames = doc["sites"][0]["frames"]
    assert doc["java_frames"] == "Compiler.perfmap"
    jit = [f for f in frames if f.endswith("([jit])")]
    assert jit and "[java: code cache] (jvm)" not in frames, frames


@pytest.mark.parametrize("major,step,method", [
    (11, "siteunsafe", "SiteLeak.leakUnsafe"),  # no perf map: the interpreter is found through VMStructs
    (17, "siteunsafe", "SiteLeak.leakUnsafe"),
    (17, "sitedirect", "SiteLeak.leakDirect"),
    (21, "siteunsafe", "SiteLeak.leakUnsafe"),
    (25, "sitedirect", "SiteLeak.leakDirect"),
])
def test_interpreted_methods_are_named_from_the_jvms_vmstructs(major, step, method, bpf_available):
    """-Xint: every Java frame is an interpreter frame, the same interpreter code for every method; the
    Method* each frame holds, read with the layout the JVM exports, names it. The whole stack, from
    the JDK's own methods to the launcher."""
    doc = _profile(major, step, flags=("-Xint",))
    frames = doc["sites"][0]["frames"]
    assert f"{method} (interpreted)" in frames, frames
    assert "NwDriver.main (interpreted)" in frames, frames
    assert frames.index(f"{method} (interpreted)") < frames.index("NwDriver.main (interpreted)")
    assert any(f.startswith("JavaMain (libjli.so)") for f in frames), frames
    assert "[java: interpreted] (jvm)" not in frames[:frames.index("NwDriver.main (interpreted)")], frames


@pytest.mark.parametrize("major,cli,why", [
    (11, (), "no Compiler.perfmap"),
    (17, ("--no-jvm",), "not allowed"),
])
def test_without_a_perf_map_java_frames_are_labelled_not_bare(major, cli, why, bpf_available):
    doc = _profile(major, "siteunsafe", cli=cli)
    assert why in doc["java_frames"], doc["java_frames"]
    assert "[java: code cache] (jvm)" in doc["sites"][0]["frames"], doc["sites"][0]["frames"]


def test_a_native_program_has_no_java_frames_entry(bpf_available):
    from conftest import build_c

    p = subprocess.Popen([str(build_c("soak_leak.c", cflags=["-O1"])), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("READY")
        exe = Path(sys.executable).parent / "nativewatch"
        r = subprocess.run([str(exe), "profile", "--pid", str(p.pid), "--duration", "2s", "--json"],
                           capture_output=True, text=True, timeout=60)
    finally:
        p.kill()
        p.wait()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["java_frames"] is None
