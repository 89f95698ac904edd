"""Container image (issue 5): the Dockerfile's steps, replayed on this host.

No container engine runs here, so the Dockerfile is kept as a list of `scripts/image-steps.sh` calls.
This test reads the Dockerfile, performs its COPY instructions into a temporary tree and runs every
RUN step in order with the image's paths mapped into that tree (/src, /opt/nativewatch, the image
root); Debian packages are checked, not installed (NW_APT_MODE=check: the host already has them).
Then the entrypoint runs in a private mount namespace whose /lib/modules is the image's writable one,
once with the node's kernel headers "mounted" and once with none (and /usr/src hidden), where the
agent's real eBPF program must compile and load against the packaged fallback headers.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from nativewatch import __version__

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
STEPS = ROOT / "scripts" / "image-steps.sh"


def parse_dockerfile() -> list[tuple[str, list[str]]]:
    """(instruction, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, list[str]]] = []
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        if rest.startswith("["):
            out.append((instr.upper(), json.loads(rest)))
        else:
            out.append((instr.upper(), shlex.split(rest)))
    return out


def run_steps(tmp: Path) -> dict[str, Path]:
    mapping = {"/src": tmp / "src", "/opt/nativewatch": tmp / "opt" / "nativewatch"}

    def host(path: str) -> str:
        for image_path, host_path in mapping.items():
            if path == image_path or path.startswith(image_path + "/"):
                return str(host_path) + path[len(image_path):]
        raise AssertionError(f"Dockerfile path {path} has no host mapping in this test")

    env = dict(os.environ, NW_APT_MODE="check")
    env.pop("NATIVEWATCH_BPF_DIR", None)
    ran: list[str] = []
    for instr, args in parse_dockerfile():
        if instr == "COPY":
            if any(a.startswith("--from=") for a in args) or args[-1] == "/usr/local/sbin/image-steps.sh":
                continue  # the build stage's output is already at the mapped prefix; the script is STEPS
            *sources, dest = args
            for src in sources:
                target = Path(host(dest.rstrip("/")))
                if dest.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    target = target / Path(src).name
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(ROOT / src, target)
        elif instr == "RUN":
            assigns = {}
            while args and "=" in args[0] and not args[0].startswith("image-steps.sh"):
                k, _, v = args.pop(0).partition("=")
                assigns[k] = v
            assert args[0] == "image-steps.sh", f"RUN must call image-steps.sh: {args}"
            step, step_args = args[1], [host(a) if a.startswith("/") else a for a in args[2:]]
            step_env = dict(env)
            for k, v in assigns.items():
                step_env[k] = str(tmp / "root") if (k, v) == ("NW_ROOT", "/") else v
            out = subprocess.run(["bash", str(STEPS), step, *step_args], env=step_env, capture_output=True,
                                 text=True, timeout=300)
            assert out.returncode == 0, f"step {step} failed:\n{out.stdout}\n{out.stderr}"
            ran.append(step)
    assert ran == ["apt", "install", "kernel-headers", "strip", "apt", "finalize"], ran
    return {"prefix": mapping["/opt/nativewatch"], "root": tmp / "root", "tmp": tmp}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian host")
    return run_steps(tmp_path_factory.mktemp("image"))


def test_dockerfile_is_two_stages_of_image_steps_with_a_non_root_default_user():
    instrs = parse_dockerfile()
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) == 2 and froms[0][-2:] == ["AS", "build"]
    final = instrs[max(n for n, (i, _a) in enumerate(instrs) if i == "FROM"):]
    assert [a for i, a in final if i == "USER"] == [["10001:10001"]]
    assert [a for i, a in final if i == "ENTRYPOINT"] == [
        ["/usr/local/sbin/image-steps.sh", "entrypoint", "/opt/nativewatch"]]
    # the final stage gets the built prefix and the script, never the sources
    copies = [a for i, a in final if i == "COPY"]
    assert copies == [["scripts/image-steps.sh", "/usr/local/sbin/image-steps.sh"],
                      ["--from=build", "/opt/nativewatch", "/opt/nativewatch"]]


def test_replayed_image_has_the_cli_and_no_build_tools(image):
    prefix = image["prefix"]
    exe = prefix / "venv" / "bin" / "nativewatch"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and __version__ in out.stdout
    assert not list((prefix / "venv" / "bin").glob("pip*"))
    for tool in ("gcc", "cc", "make", "ld"):
        assert not list(prefix.rglob(tool)), tool
    site = next((prefix / "venv" / "lib").glob("python3*/site-packages"))
    assert sorted(p.name for p in (site / "bpf").glob("*.c")) == sorted(p.name for p in (ROOT / "bpf").glob("*.c"))
    assert (image["root"] / "lib" / "modules").readlink() == Path("/tmp/nativewatch/lib-modules")
    assert (prefix / "venv" / "pyvenv.cfg").read_text().count("include-system-site-packages = true") == 1


def test_finalize_refuses_to_run_without_an_explicit_root(image):
    out = subprocess.run(["bash", str(STEPS), "finalize", str(image["prefix"])], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "NW_ROOT"}, timeout=60)
    assert out.returncode != 0 and "NW_ROOT" in out.stderr
    assert not Path("/lib/modules").is_symlink()


def in_mount_namespace(image: dict[str, Path], script: str) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (root only)."""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PREFIX=str(image["prefix"]), STEPS=str(STEPS), T=str(image["tmp"])))


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare for a private mount namespace")


@needs_root
def test_entrypoint_uses_the_nodes_kernel_headers_when_mounted(image):
    krel = os.uname().release
    host_build = Path(f"/lib/modules/{krel}/build")
    if not (host_build / "include").exists():
        pytest.skip("this host has no kernel headers linked (scripts/setup.sh links them)")
    out = in_mount_namespace(image, """
        mkdir -p "$T/node-modules" "$T/image-modules"
        mount --bind /lib/modules "$T/node-modules"      # what the DaemonSet mounts at /host/lib/modules
        mount --bind "$T/image-modules" /lib/modules     # the image's writable /lib/modules
        NW_HOST_MODULES="$T/node-modules" "$STEPS" entrypoint "$PREFIX" doctor
        readlink /lib/modules/$(uname -r)/build
    """)
    assert out.returncode == 0, out.stderr
    assert "kernel headers: node's" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(host_build.resolve())
    assert any(line.startswith("OK") and "kernel headers" in line for line in out.stdout.splitlines())


@needs_root
def test_entrypoint_falls_back_to_packaged_headers_and_the_agents_probe_loads(image, bpf_available):
    out = in_mount_namespace(image, """
        mkdir -p "$T/image-modules2" "$T/empty"
        mount --bind "$T/image-modules2" /lib/modules
        mount --bind "$T/empty" /usr/src                 # a node without headers
        NW_HOST_MODULES="$T/no-such-dir" "$STEPS" entrypoint "$PREFIX" doctor
        readlink /lib/modules/$(uname -r)/build
        "$PREFIX/venv/bin/python" -c '
from nativewatch.sources.bpf import load_bpf
b = load_bpf("oom_kill.c", {"RINGBUF_PAGES": 8})
print("probe loaded:", b.num_open_tracepoints(), "tracepoint(s)")
b.cleanup()'
    """)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kernel headers: packaged fallback" in out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2].startswith(str(image["prefix"] / "kernel-headers" / "linux-headers-"))
    assert lines[-1].startswith("probe loaded:") and not lines[-1].startswith("probe loaded: 0 ")
