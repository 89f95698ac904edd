"""Safety rules of the attach path that need no JVM: path resolution under a target's root, socket and
trigger-file checks, thread-local credentials, hsperfdata lookup, and the HotSpot verification (issue 7).
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from nativewatch.jvm import attach, hsperf, paths, verify
from nativewatch.sources import procfs
from tests.conftest import SAMPLES

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (credential switching, chown)")


@pytest.fixture
def fake_root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "marker").write_text("inside")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def test_absolute_symlink_resolves_inside_the_target_root(fake_root):
    root, fd = fake_root
    (root / "tmp").symlink_to("/etc")  # from the host this would be the host's /etc
    got = paths.open_in_root(fd, "tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.fstat(got).st_ino == (root / "etc").stat().st_ino
        assert os.fstat(got).st_ino != os.stat("/etc").st_ino
    finally:
        os.close(got)


def test_dotdot_symlink_cannot_climb_out_of_the_root(fake_root):
    root, fd = fake_root
    (root / "tmp").symlink_to("../../../../../etc")
    got = paths.open_in_root(fd, "tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.fstat(got).st_ino == (root / "etc").stat().st_ino
    finally:
        os.close(got)


def test_fallback_walk_refuses_any_symlink(fake_root):
    root, fd = fake_root
    (root / "tmp").symlink_to("etc")
    with pytest.raises(OSError):
        paths._walk_nofollow(fd, "tmp", os.O_RDONLY | os.O_DIRECTORY)
    with pytest.raises(OSError):
        paths._walk_nofollow(fd, "../etc", os.O_RDONLY | os.O_DIRECTORY)


def _dir_fd(p) -> int:
    return os.open(p, os.O_RDONLY | os.O_DIRECTORY)


def test_socket_node_checks_type_owner_and_symlink(tmp_path):
    fd = _dir_fd(tmp_path)
    try:
        assert attach._open_socket_node(fd, ".java_pid1", os.geteuid()) is None
        (tmp_path / ".java_pid1").write_text("not a socket")
        with pytest.raises(attach.AttachRefused, match="not a socket"):
            attach._open_socket_node(fd, ".java_pid1", os.geteuid())
        (tmp_path / ".java_pid1").unlink()
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / "real.sock"))
        (tmp_path / ".java_pid1").symlink_to(tmp_path / "real.sock")
        with pytest.raises(attach.AttachRefused, match="symlink"):
            attach._open_socket_node(fd, ".java_pid1", os.geteuid())
        (tmp_path / ".java_pid1").unlink()
        s2 = socket.socket(socket.AF_UNIX)
        s2.bind(str(tmp_path / ".java_pid1"))
        with pytest.raises(attach.AttachRefused, match="owned by uid"):
            attach._open_socket_node(fd, ".java_pid1", os.geteuid() + 4242)
        node = attach._open_socket_node(fd, ".java_pid1", os.geteuid())
        assert node is not None
        os.close(node)
        s.close()
        s2.close()
    finally:
        os.close(fd)


def test_trigger_file_never_follows_a_planted_symlink(tmp_path):
    fd = _dir_fd(tmp_path)
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    try:
        (tmp_path / ".attach_pid7").symlink_to(victim)
        with pytest.raises(attach.AttachRefused):
            attach._create_trigger(fd, ".attach_pid7", os.geteuid())
        assert not victim.exists()
        (tmp_path / ".attach_pid7").unlink()
        ident = attach._create_trigger(fd, ".attach_pid7", os.geteuid())
        assert ident is not None and (tmp_path / ".attach_pid7").is_file()
        # A leftover trigger of the right owner is reused, and only our own file is ever removed.
        assert attach._create_trigger(fd, ".attach_pid7", os.geteuid()) is None
        attach._remove_trigger(fd, ".attach_pid7", None)
        assert (tmp_path / ".attach_pid7").exists()
        attach._remove_trigger(fd, ".attach_pid7", ident)
        assert not (tmp_path / ".attach_pid7").exists()
    finally:
        os.close(fd)


@needs_root
def test_credentials_switch_only_the_calling_thread():
    seen_elsewhere: list[int] = []
    inside = threading.Event()
    done = threading.Event()

    def other() -> None:
        inside.wait(10)
        seen_elsewhere.append(os.geteuid())
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with attach._as_target(65534, 65534):
        assert os.geteuid() == 65534 and os.getegid() == 65534
        inside.set()
        done.wait(10)
    t.join()
    assert seen_elsewhere == [0]
    assert os.geteuid() == 0 and os.getegid() == 0
    assert procfs.read_status(os.getpid()).uid[1] == 0
    import ctypes

    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 1  # still dumpable


@needs_root
def test_hsperfdata_lookup_skips_symlinks_and_foreign_owners(tmp_path):
    raw = (SAMPLES / "hsperfdata-jdk17.bin").read_bytes()
    (tmp_path / "hsperfdata_app").mkdir()
    (tmp_path / "hsperfdata_app" / "42").write_bytes(raw)
    (tmp_path / "hsperfdata_evil").mkdir()
    (tmp_path / "hsperfdata_evil" / "43").symlink_to(tmp_path / "hsperfdata_app" / "42")
    fd = _dir_fd(tmp_path)
    try:
        assert hsperf.find_hsperfdata(fd, 42, 0) == raw
        assert hsperf.find_hsperfdata(fd, 42, 1234) is None  # not owned by the JVM's uid
        assert hsperf.find_hsperfdata(fd, 43, 0) is None  # symlink
        os.chown(tmp_path / "hsperfdata_app" / "42", 1234, 1234)
        assert hsperf.find_hsperfdata(fd, 42, 1234) == raw
    finally:
        os.close(fd)


def _status(sigcgt: int, state: str = "S") -> procfs.Status:
    return procfs.Status(name="java", pid=10, nspid=(10,), uid=(0, 0, 0, 0), gid=(0, 0, 0, 0), sigcgt=sigcgt,
                         state=state)


_LIBJVM = procfs.Mapping(0x1000, 0x2000, "r-xp", 0, "fe:00", 5, "/usr/lib/jvm/x/lib/server/libjvm.so")
_QUIT = 1 << (signal.SIGQUIT - 1)


def test_verify_requires_libjvm_sigquit_and_enabled_attach():
    assert verify.check_hotspot_facts(1, [_LIBJVM], _status(_QUIT), ["java", "App"]).ok
    assert not verify.check_hotspot_facts(1, [], _status(_QUIT), ["java"]).ok
    no_quit = verify.check_hotspot_facts(1, [_LIBJVM], _status(0), ["java", "-Xrs", "App"])
    assert not no_quit.ok and not no_quit.sigquit_caught
    j9 = procfs.Mapping(0x3000, 0x4000, "r-xp", 0, "fe:00", 6, "/opt/j9/lib/default/libj9vm29.so")
    assert not verify.check_hotspot_facts(1, [_LIBJVM, j9], _status(_QUIT), ["java"]).ok
    assert not verify.check_hotspot_facts(1, [_LIBJVM], _status(_QUIT, "Z"), ["java"]).ok


@pytest.mark.parametrize("args,env,hsperf_args,disabled", [
    (["java", "-XX:+DisableAttachMechanism", "App"], [], [], True),
    (["java", "App"], ["-Xmx1g -XX:+DisableAttachMechanism"], [], True),
    (["java", "-XX:-DisableAttachMechanism", "App"], ["-XX:+DisableAttachMechanism"], [], False),
    (["java", "App"], [], ["-Xmx64m -XX:+DisableAttachMechanism"], True),
    (["java", "-XX:+DisableAttachMechanism", "-XX:-DisableAttachMechanism", "App"], [], [], False),
])
def test_verify_attach_disabled_sources(args, env, hsperf_args, disabled):
    c = verify.check_hotspot_facts(1, [_LIBJVM], _status(_QUIT), args, env, hsperf_args)
    assert c.attach_disabled is disabled and c.ok is (not disabled)


def test_parse_stat_starttime_with_hostile_comm():
    line = b"123 (evil) 1 2 3 (x) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 100 200"
    assert paths.parse_stat_starttime(line) == 987654
    assert paths.parse_stat_starttime(b"garbage") == 0


def test_hsperfdata_lookup_never_opens_a_fifo(tmp_path):
    (tmp_path / "hsperfdata_app").mkdir()
    os.mkfifo(tmp_path / "hsperfdata_app" / "42")  # a blocking open(O_RDONLY) would hang here
    fd = _dir_fd(tmp_path)
    try:
        assert hsperf.find_hsperfdata(fd, 42, None) is None
    finally:
        os.close(fd)
