"""HotSpot dynamic attach, spoken directly (no JDK needed next to nativewatch).

Handshake (Linux HotSpot): if the JVM's attach listener is not running yet, create the trigger file
`.attach_pid<NSPID>` in the JVM's /tmp and send SIGQUIT; the JVM then checks for that file, starts the
listener and creates the UNIX socket `/tmp/.java_pid<NSPID>` (NSPID = the pid the JVM sees in its own
PID namespace; /tmp = the JVM's own /tmp, reached as /proc/PID/root/tmp). One request per connection:

    v1: "1\\0" CMD "\\0" ARG1 "\\0" ARG2 "\\0" ARG3 "\\0"      (exactly three args; jcmd uses the first)
    v2: "2\\0" LEN "\\0" CMD "\\0" (ARG "\\0")*                (JDK 24+, LEN = bytes after the LEN field)

The reply is "<code>\\n" then the output; code 0 is success, 101 "protocol version not supported".
A JVM offers v2 when `getversion` answers "2" (older JVMs answer -1 "not recognized").

Safety (the target is untrusted):
- signal only a verified HotSpot JVM (verify.py), through a pidfd opened *before* verification so a
  reused pid can never receive the signal;
- the trigger file is created with O_CREAT|O_EXCL|O_NOFOLLOW inside /tmp opened under the target's
  root (paths.py), so a planted symlink is never followed, and only the file we created is removed;
- the socket is opened O_PATH|O_NOFOLLOW, must be a socket owned by the JVM's euid, and is connected
  through /proc/thread-self/fd/N: we connect to exactly the inode we checked;
- the JVM accepts a peer whose euid/egid equal its own (or root *in its user namespace*), so the
  calling thread takes the JVM's euid/egid (raw setresuid/setresgid syscalls change only this thread,
  unlike the glibc wrappers) for file creation and connect, and restores them right after;
- one deadline bounds every step; a global semaphore bounds concurrent attaches; replies are capped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from nativewatch import cachestats
from nativewatch.errors import NativewatchError, ProcessGone
from nativewatch.jvm import paths
from nativewatch.jvm.verify import check_hotspot

__all__ = [
    "AttachError", "AttachTimeout", "AttachRefused", "NotAttachable", "AttachResult",
    "encode_request", "parse_reply", "execute", "jcmd", "set_max_concurrent", "MAX_REPLY_BYTES",
]

MAX_REPLY_BYTES = 16 << 20  # NMT detail of a big application is a few MiB
ATTACH_ERROR_BADVERSION = 101
V1_NAME_MAX = 16
V1_ARG_MAX = 1024
_SYSCALLS = {"x86_64": (117, 119), "aarch64": (147, 149)}.get(platform.machine())  # setresuid, setresgid
_PR_GET_DUMPABLE, _PR_SET_DUMPABLE = 3, 4
_libc = ctypes.CDLL(None, use_errno=True)

_sem_lock = threading.Lock()
_sem = threading.BoundedSemaphore(4)
_version_cache: dict[tuple[int, int], int] = {}
cachestats.register("jvm_attach_versions", lambda: len(_version_cache))


class AttachError(NativewatchError):
    """The JVM could not be asked, or answered with an error."""


class AttachTimeout(AttachError):
    pass


class AttachRefused(AttachError):
    """A safety check failed (socket owner, symlink, file type): nothing was written or connected."""


class NotAttachable(AttachError):
    """The process is not a HotSpot JVM we may signal, or attach is disabled."""

    def __init__(self, pid: int, reasons: Sequence[str]) -> None:
        super().__init__(f"pid {pid}: " + "; ".join(reasons))
        self.reasons = tuple(reasons)


@dataclass(frozen=True, slots=True)
class AttachResult:
    code: int
    output: str
    protocol: int
    elapsed_s: float


def set_max_concurrent(n: int) -> None:
    """Bound on attaches in flight in this process (default 4). Call before attaching."""
    global _sem
    with _sem_lock:
        _sem = threading.BoundedSemaphore(max(1, n))


def encode_request(command: str, args: Sequence[str], version: int = 1) -> bytes:
    if "\0" in command or any("\0" in a for a in args):
        raise AttachError("NUL byte in attach request")
    if version == 1:
        if len(args) > 3:
            raise AttachError("protocol v1 carries at most 3 arguments")
        if len(command.encode()) > V1_NAME_MAX or any(len(a.encode()) > V1_ARG_MAX for a in args):
            raise AttachError("command or argument too long for protocol v1")
        padded = [*args, *([""] * (3 - len(args)))]
        return b"1\0" + b"".join(s.encode() + b"\0" for s in [command, *padded])
    if version == 2:
        body = b"".join(s.encode() + b"\0" for s in [command, *args])
        return b"2\0" + str(len(body)).encode() + b"\0" + body
    raise AttachError(f"unknown attach protocol version {version}")


def parse_reply(data: bytes) -> tuple[int, str]:
    """(result code, output). Raises AttachError on anything that is not "<int>\\n..."."""
    head, sep, rest = data.partition(b"\n")
    text = head.strip()
    if not text or len(text) > 12 or not (text.lstrip(b"-").isdigit()):
        raise AttachError(f"malformed attach reply (starts {data[:40]!r})")
    if not sep and not text:
        raise AttachError("empty attach reply")
    return int(text), rest.decode("utf-8", "replace")


# ---- credentials -------------------------------------------------------------------------------------

def _raw(nr: int, *a: int) -> None:
    if _libc.syscall(nr, *[ctypes.c_long(x) for x in a]) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextlib.contextmanager
def _as_target(euid: int, egid: int) -> Iterator[None]:
    """Run the block with this thread's effective uid/gid set to the JVM's (root only; else no-op)."""
    if os.geteuid() != 0 or (euid == 0 and egid == 0) or _SYSCALLS is None:
        yield
        return
    sys_uid, sys_gid = _SYSCALLS
    dumpable = _libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
    try:
        _raw(sys_gid, -1, egid, -1)
    except OSError:
        # The ids are not mapped in our user namespace, or CAP_SETGID is missing: stay root, which
        # the JVM also accepts when it shares our user namespace.
        yield
        return
    try:
        _raw(sys_uid, -1, euid, -1)
    except OSError:
        _raw(sys_gid, -1, 0, -1)
        yield
        return
    try:
        yield
    finally:
        # Real and saved uid stayed 0, so taking euid 0 back is always allowed.
        _raw(sys_uid, -1, 0, -1)
        _raw(sys_gid, -1, 0, -1)
        if dumpable == 1:
            # Changing euid made the kernel mark us non-dumpable; put it back as it was.
            _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)


# ---- the handshake ----------------------------------------------------------------------------------

def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AttachTimeout(f"timed out {what}")
    return left


def _open_socket_node(tmp_fd: int, name: str, euid: int) -> int | None:
    """O_PATH fd of the attach socket if it exists and is safe; None if absent."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmp_fd)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if stat.S_ISLNK(st.st_mode):
        os.close(fd)
        raise AttachRefused(f"{name} is a symlink")
    if not stat.S_ISSOCK(st.st_mode):
        os.close(fd)
        raise AttachRefused(f"{name} is not a socket")
    if st.st_uid != euid:
        os.close(fd)
        raise AttachRefused(f"{name} is owned by uid {st.st_uid}, not by the JVM's euid {euid}")
    return fd


def _create_trigger(tmp_fd: int, name: str, euid: int) -> tuple[int, int] | None:
    """Create the trigger file; returns (dev, ino) of the file we made, None if a usable one exists.

    An existing trigger is only accepted as a regular file owned by the JVM's user or root (what the
    JVM itself accepts); anything else - a symlink planted to make the JVM, or us, look elsewhere - is
    refused, because the JVM would then miss the trigger and answer SIGQUIT with a thread dump.
    """
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=tmp_fd)
    except FileExistsError:
        st = os.stat(name, dir_fd=tmp_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (euid, 0):
            raise AttachRefused(f"{name} exists and is not a regular file of the JVM's user") from None
        return None
    st = os.fstat(fd)
    os.close(fd)
    return st.st_dev, st.st_ino


def _remove_trigger(tmp_fd: int, name: str, ident: tuple[int, int] | None) -> None:
    if ident is None:
        return
    with contextlib.suppress(OSError):
        st = os.stat(name, dir_fd=tmp_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == ident:
            os.unlink(name, dir_fd=tmp_fd)


def _recv_all(conn: socket.socket, deadline: float, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        conn.settimeout(_remaining(deadline, "waiting for the JVM's reply"))
        try:
            b = conn.recv(65536)
        except TimeoutError:
            raise AttachTimeout("timed out waiting for the JVM's reply") from None
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        total += len(b)
        if total > limit:
            raise AttachError(f"attach reply larger than {limit} bytes")


def _connect_node(node: int, ids: paths.TargetIds, deadline: float) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(_remaining(deadline, "connecting"))
        with _as_target(ids.euid, ids.egid):
            conn.connect(f"/proc/thread-self/fd/{node}")
    except TimeoutError:
        conn.close()
        raise AttachTimeout("timed out connecting to the attach socket") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(pid: int, proc_root: str, deadline: float, pidfd: int | None) -> tuple[socket.socket, paths.TargetIds]:
    """Connect to the JVM's attach socket, starting its listener first if needed.

    A socket that refuses connections is a leftover of an earlier JVM with the same pid (a JVM that
    was SIGKILLed cannot remove it): the listener is then started as if no socket existed, and the
    JVM replaces the file; we wait for a socket with a different inode.
    """
    ids = paths.target_ids(pid, proc_root)
    tmp_fd = paths.open_target_tmp(pid, proc_root)
    sock_name, trig_name = f".java_pid{ids.nspid}", f".attach_pid{ids.nspid}"
    stale: int | None = None
    ident: tuple[int, int] | None = None
    triggered = False
    delay = 0.005
    try:
        while True:
            node = _open_socket_node(tmp_fd, sock_name, ids.euid)
            if node is not None and stale is not None and os.fstat(node).st_ino == stale:
                os.close(node)
                node = None
            if node is None:
                if not triggered:
                    with _as_target(ids.euid, ids.egid):
                        ident = _create_trigger(tmp_fd, trig_name, ids.euid)
                    triggered = True
                    if pidfd is not None:
                        signal.pidfd_send_signal(pidfd, signal.SIGQUIT)
                    else:
                        os.kill(pid, signal.SIGQUIT)
                time.sleep(min(delay, _remaining(deadline, "waiting for the attach listener to start")))
                delay = min(delay * 2, 0.1)
                continue
            try:
                return _connect_node(node, ids, deadline), ids
            except ConnectionRefusedError:
                if triggered:
                    raise AttachError("the attach socket refuses connections") from None
                stale = os.fstat(node).st_ino
            finally:
                os.close(node)
    finally:
        _remove_trigger(tmp_fd, trig_name, ident)
        os.close(tmp_fd)


def _request(pid: int, proc_root: str, deadline: float, pidfd: int | None, payload: bytes,
             limit: int) -> tuple[bytes, paths.TargetIds]:
    conn, ids = _connect(pid, proc_root, deadline, pidfd)
    with conn:
        conn.settimeout(_remaining(deadline, "sending the request"))
        try:
            conn.sendall(payload)
        except TimeoutError:
            raise AttachTimeout("timed out sending the request") from None
        except OSError as exc:
            raise AttachError(f"sending the request failed: {exc}") from None
        return _recv_all(conn, deadline, limit), ids


def execute(pid: int, command: str, args: Sequence[str] = (), *, proc_root: str = "/proc",
            timeout_s: float = 5.0, protocol: str | int = "auto",
            max_reply_bytes: int = MAX_REPLY_BYTES) -> AttachResult:
    """Run one attach operation ("jcmd", "properties", ...) on a verified HotSpot JVM.

    protocol: 1, 2, or "auto" (asks `getversion` once per JVM lifetime and uses v2 when offered).
    Raises NotAttachable, AttachRefused, AttachTimeout, AttachError, ProcessGone.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    sem = _sem
    if not sem.acquire(timeout=max(0.0, timeout_s)):
        raise AttachTimeout("too many attaches in flight")
    pidfd: int | None = None
    try:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ProcessGone(pid) from None
        except OSError:
            pidfd = None
        check = check_hotspot(pid, proc_root)
        if not check.ok:
            raise NotAttachable(pid, check.reasons)
        version = protocol if isinstance(protocol, int) else 0
        key = (pid, 0)
        if protocol == "auto":
            ids = paths.target_ids(pid, proc_root)
            key = (pid, ids.starttime)
            version = _version_cache.get(key, 0)
            if not version:
                raw, _ = _request(pid, proc_root, deadline, pidfd, encode_request("getversion", []), 4096)
                code, out = parse_reply(raw)
                version = 2 if code == 0 and out.strip().split(" ")[0] == "2" else 1
                if len(_version_cache) > 4096:
                    _version_cache.clear()
                _version_cache[key] = version
        raw, _ = _request(pid, proc_root, deadline, pidfd, encode_request(command, args, version),
                          max_reply_bytes)
        code, out = parse_reply(raw)
        if code == ATTACH_ERROR_BADVERSION and version == 2:
            if protocol != "auto":
                raise AttachError("the JVM refused protocol v2 (code 101)")
            # v2 offered but refused (e.g. disabled since the probe): speak v1 from now on.
            _version_cache[key] = version = 1
            raw, _ = _request(pid, proc_root, deadline, pidfd, encode_request(command, args, 1), max_reply_bytes)
            code, out = parse_reply(raw)
        return AttachResult(code, out, version, time.monotonic() - t0)
    except OSError as exc:
        if exc.errno in (errno.ESRCH,):
            raise ProcessGone(pid) from None
        raise AttachError(f"attach to pid {pid} failed: {exc}") from None
    finally:
        if pidfd is not None:
            os.close(pidfd)
        sem.release()


def jcmd(pid: int, command_line: str, *, proc_root: str = "/proc", timeout_s: float = 5.0,
         protocol: str | int = "auto") -> str:
    """Output of a diagnostic command, like `jcmd PID COMMAND_LINE`; AttachError if the JVM says no."""
    res = execute(pid, "jcmd", [command_line], proc_root=proc_root, timeout_s=timeout_s, protocol=protocol)
    if res.code != 0:
        raise AttachError(f"jcmd {command_line.split(' ')[0]!r} failed (code {res.code}): "
                          f"{res.output.strip()[:500]}")
    return res.output
