"""procfs source: parse /proc/PID/{smaps,smaps_rollup,maps,status,...} into typed facts.

Parsers are pure (bytes in, frozen dataclasses out) and never raise on odd input: they return what they
could read plus a tuple of problems. Readers are thin and translate OS errors the psutil way: a vanished
pid becomes `ProcessGone` (confirmed by the pid's `stat` being gone too), EPERM/EACCES `AccessDenied`.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from nativewatch.errors import AccessDenied, ProcessGone

__all__ = [
    "Mapping", "SmapsResult", "Status", "parse_smaps", "parse_maps", "parse_status", "parse_rollup",
    "read_file", "read_smaps", "read_rollup", "read_maps", "read_status", "read_comm", "read_cmdline",
    "list_pids", "list_tids", "thread_stack_pointers", "parse_thread_syscall",
]

PAGE = 4096
# Mapping names the kernel gives that are neither files nor plain anonymous memory.
SPECIAL_NAMES = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    fields: dict[str, int] = field(default_factory=dict)  # every "Key: N kB" field, in bytes
    vmflags: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.end - self.start

    # dict.get, not self.fields.get: the four hot fields are always present in a lazily parsed
    # _SmapsFields, and its Python-level get() would be four extra calls per mapping in every scan.
    @property
    def rss(self) -> int:
        return dict.get(self.fields, "Rss", 0)

    @property
    def pss(self) -> int:
        return dict.get(self.fields, "Pss", 0)

    @property
    def anonymous(self) -> int:
        return dict.get(self.fields, "Anonymous", 0)

    @property
    def swap(self) -> int:
        return dict.get(self.fields, "Swap", 0)

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")

    @property
    def is_anonymous(self) -> bool:
        """No backing file: plain anonymous memory, `[heap]`, `[stack]` or a `[anon:name]` region."""
        return self.inode == 0 and (self.path == "" or self.path.startswith("[")) and \
            self.path not in SPECIAL_NAMES

    @property
    def anon_name(self) -> str | None:
        if self.path.startswith("[anon:") and self.path.endswith("]"):
            return self.path[6:-1]
        if self.path.startswith("[anon_shmem:") and self.path.endswith("]"):
            return self.path[12:-1]
        return None

    @property
    def shared(self) -> bool:
        return len(self.perms) > 3 and self.perms[3] == "s"


@dataclass(frozen=True, slots=True)
class SmapsResult:
    mappings: tuple[Mapping, ...]
    problems: tuple[str, ...] = ()

    @property
    def rss(self) -> int:
        return sum(m.rss for m in self.mappings)


@dataclass(frozen=True, slots=True)
class Status:
    name: str = ""
    pid: int = 0
    ppid: int = 0
    nspid: tuple[int, ...] = ()
    uid: tuple[int, ...] = ()  # real, effective, saved, fs
    gid: tuple[int, ...] = ()
    threads: int = 0
    vmrss_bytes: int = 0
    rss_anon_bytes: int = 0
    rss_file_bytes: int = 0
    rss_shmem_bytes: int = 0
    vmswap_bytes: int = 0
    sigcgt: int = 0
    sigblk: int = 0
    sigign: int = 0
    state: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _is_header(line: bytes) -> bool:
    # Header lines start with "start-end"; field lines with "Name:". Only headers have '-' before the
    # first space and a hex digit first; "VmFlags:" and the fields all have ':' in their first token.
    sp = line.find(b" ")
    first = line[:sp] if sp >= 0 else line
    return b"-" in first and b":" not in first


def _header_fields(line: bytes) -> tuple[int, int, str, int, str, int, str] | None:
    parts = line.split(None, 5)
    if len(parts) < 5:
        return None
    try:
        lo, _, hi = parts[0].partition(b"-")
        start, end = int(lo, 16), int(hi, 16)
        offset = int(parts[2], 16)
        inode = int(parts[4])
    except ValueError:
        return None
    if end < start:
        return None
    path = parts[5].rstrip(b"\n").strip().decode("utf-8", "surrogateescape") if len(parts) > 5 else ""
    # perms and dev: a handful of distinct values per machine, decoded once (the field-name cache)
    return start, end, _key(parts[1]), offset, _key(parts[3]), inode, path


def _parse_header(line: bytes) -> Mapping | None:
    f = _header_fields(line)
    return Mapping(*f) if f is not None else None


def _parse_kb_field(line: bytes) -> tuple[str, int] | None:
    key, sep, rest = line.partition(b":")
    if not sep:
        return None
    toks = rest.split()
    if not toks:
        return None
    try:
        value = int(toks[0])
    except ValueError:
        return None
    if value < 0:
        return None
    unit = toks[1].lower() if len(toks) > 1 else b""
    if unit == b"kb":
        value *= 1024
    elif unit == b"mb":
        value *= 1024 * 1024
    elif unit not in (b"", b"b"):
        return None
    return key.strip().decode("ascii", "replace"), value


_KEYS: dict[bytes, str] = {}


def _key(raw: bytes) -> str:
    k = _KEYS.get(raw)
    if k is None:
        k = raw.strip().decode("ascii", "replace")
        if len(_KEYS) < 256:  # field names are a small fixed set; never let a target grow this
            _KEYS[raw] = k
    return k


# A line that is neither "Key: N [kB]" nor "VmFlags: ..." inside a mapping's block.
_HOT_KEYS = ((b"\nRss:", "Rss"), (b"\nPss:", "Pss"), (b"\nAnonymous:", "Anonymous"), (b"\nSwap:", "Swap"))
_HOT = frozenset(k for _, k in _HOT_KEYS)


class _SmapsFields(dict):  # type: ignore[type-arg]
    """A mapping's smaps fields: the four attribution reads up front, the other ~20 on first use.

    Scans read Rss/Pss/Anonymous/Swap of every mapping and the rest almost never; parsing those
    lazily keeps a full scan close to the cost of reading /proc (benchmarks/bench_breakdown.py).
    """

    __slots__ = ("_raw", "_loaded")

    def __init__(self, hot: dict[str, int], raw: bytes) -> None:
        # raw: the mapping's block, its header line first
        super().__init__(hot)
        self._raw = raw
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            raw = self._raw
            for line in raw[raw.find(b"\n") + 1:].split(b"\n"):  # the mapping's header line first
                kv = _parse_kb_field(line)
                if kv is not None:
                    dict.__setitem__(self, kv[0], kv[1])

    def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
        if not self._loaded and key not in _HOT:
            self._load()
        return dict.get(self, key, default)

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        if not self._loaded and key not in _HOT:
            self._load()
        return dict.__getitem__(self, key)

    def __contains__(self, key):  # type: ignore[no-untyped-def, override]
        self._load()
        return dict.__contains__(self, key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def __eq__(self, other: object) -> bool:
        self._load()
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._load()
        return dict.__repr__(self)

    def keys(self):  # type: ignore[no-untyped-def, override]
        self._load()
        return dict.keys(self)

    def items(self):  # type: ignore[no-untyped-def, override]
        self._load()
        return dict.items(self)

    def values(self):  # type: ignore[no-untyped-def, override]
        self._load()
        return dict.values(self)


def parse_smaps(data: bytes) -> SmapsResult:
    """Parse /proc/PID/smaps. Unknown or broken lines become problems, never exceptions.

    This is the hot path of every scan, so kernel-shaped text takes a fast path: the kernel ends every
    mapping's block with its VmFlags line, so splitting there yields one block per mapping, checked
    with C-speed counts (every body line is "Key: N kB" or one of the two unitless fields) and read
    with four finds; other fields are parsed on first use. Any other text takes the line-by-line
    parser, which reports each odd line as a problem.
    """
    if not data.endswith(b"\n") or b"\n\n" in data or b"\nVmFlags:" not in data:
        return _parse_smaps_lines(data)
    # Kernel-shaped means every line is a mapping's header (one per VmFlags line), a "Key: N kB" line,
    # VmFlags, THPeligible or ProtectionKey: counted once over the whole text, at C speed.
    maps = data.count(b"\nVmFlags:")
    if data.count(b"\n") != 2 * maps + data.count(b" kB\n") + data.count(b"\nTHPeligible:") + \
            data.count(b"\nProtectionKey:"):
        return _parse_smaps_lines(data)
    parts = data.split(b"\nVmFlags:")
    mappings: list[Mapping] = []
    append = mappings.append
    block = parts[0]
    for part in parts[1:]:
        nl = part.find(b"\n")
        m = _fast_mapping(block, part[:nl] if nl >= 0 else part)
        if m is None:
            return _parse_smaps_lines(data)
        append(m)
        block = part[nl + 1:] if nl >= 0 else b""
    if block:
        return _parse_smaps_lines(data)  # a mapping without its VmFlags line: not kernel-shaped
    return SmapsResult(tuple(mappings), ())


def _hot(block: bytes, needle: bytes, start: int) -> int:
    i = block.find(needle, start)
    if i < 0:
        return 0
    return int(block[i + len(needle): block.find(b" kB", i)]) * 1024


def _fast_mapping(block: bytes, flags: bytes) -> Mapping | None:
    """One mapping from its block (header line, then its "Key: N kB" lines; VmFlags apart)."""
    nl = block.find(b"\n")
    if nl < 0:
        return None
    head = _header_fields(block[:nl])
    if head is None:
        return None
    try:
        hot = {"Rss": _hot(block, b"\nRss:", nl), "Pss": _hot(block, b"\nPss:", nl),
               "Anonymous": _hot(block, b"\nAnonymous:", nl), "Swap": _hot(block, b"\nSwap:", nl)}
    except ValueError:
        return None
    return Mapping(*head, _SmapsFields(hot, block), tuple(flags.decode("ascii", "replace").split()))


def _parse_smaps_lines(data: bytes) -> SmapsResult:
    """Parse /proc/PID/smaps. Unknown or broken lines become problems, never exceptions.

    The loop is the hot path of every scan (~25 lines per mapping), so the common "Key:   N kB" line
    is handled inline before any other line shape is tried.
    """
    mappings: list[Mapping] = []
    problems: list[str] = []
    cur: Mapping | None = None
    fields: dict[str, int] = {}
    vmflags: tuple[str, ...] = ()
    append = mappings.append
    keys = _KEYS

    for lineno, line in enumerate(data.split(b"\n"), 1):
        if line.endswith(b" kB"):
            key, sep, rest = line.partition(b":")
            if sep and cur is not None:
                try:
                    value = int(rest[:-3])
                except ValueError:
                    value = -1
                if value >= 0:
                    k = keys.get(key)
                    fields[k if k is not None else _key(key)] = value * 1024
                    continue
            problems.append(f"line {lineno}: unreadable field" if cur is not None
                            else f"line {lineno}: field outside a mapping")
            continue
        if not line:
            continue
        if line.startswith(b"VmFlags:"):
            vmflags = tuple(t.decode("ascii", "replace") for t in line[8:].split())
            continue
        if _is_header(line):
            if cur is not None:
                append(Mapping(cur.start, cur.end, cur.perms, cur.offset, cur.dev, cur.inode, cur.path,
                               fields, vmflags))
            cur = _parse_header(line)
            fields, vmflags = {}, ()
            if cur is None:
                problems.append(f"line {lineno}: bad mapping header")
            continue
        if cur is None:
            if line.strip():
                problems.append(f"line {lineno}: field outside a mapping")
            continue
        kv = _parse_kb_field(line)
        if kv is None:
            # THPeligible / ProtectionKey are unitless numbers; anything else odd is a problem.
            if line.strip():
                problems.append(f"line {lineno}: unreadable field")
            continue
        fields[kv[0]] = kv[1]
    if cur is not None:
        append(Mapping(cur.start, cur.end, cur.perms, cur.offset, cur.dev, cur.inode, cur.path, fields, vmflags))
    if len(problems) > 50:
        problems = problems[:50] + [f"... {len(problems) - 50} more"]
    return SmapsResult(tuple(mappings), tuple(problems))


def parse_maps(data: bytes) -> SmapsResult:
    """Parse /proc/PID/maps: the same `Mapping`s with no fields."""
    out: list[Mapping] = []
    problems: list[str] = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        m = _parse_header(line)
        if m is None:
            problems.append(f"line {lineno}: bad mapping line")
        else:
            out.append(m)
    return SmapsResult(tuple(out), tuple(problems))


def parse_rollup(data: bytes) -> tuple[dict[str, int], tuple[str, ...]]:
    """Parse /proc/PID/smaps_rollup: the summed fields, in bytes."""
    fields: dict[str, int] = {}
    problems: list[str] = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip() or _is_header(line):
            continue
        kv = _parse_kb_field(line)
        if kv is None:
            problems.append(f"line {lineno}: unreadable field")
        else:
            fields[kv[0]] = kv[1]
    return fields, tuple(problems)


def _ints(text: str, base: int = 10) -> tuple[int, ...]:
    out = []
    for tok in text.split():
        try:
            out.append(int(tok, base))
        except ValueError:
            return tuple(out)
    return tuple(out)


def _kb(text: str) -> int:
    toks = text.split()
    try:
        v = int(toks[0]) if toks else 0
    except ValueError:
        return 0
    return v * 1024 if len(toks) > 1 and toks[1].lower() == "kb" else v


def parse_status(data: bytes) -> Status:
    fields: dict[str, str] = {}
    problems: list[str] = []
    for line in data.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        key, sep, val = line.partition(":")
        if not sep:
            problems.append("unreadable status line")
            continue
        fields[key.strip()] = val.strip()

    def num(key: str, base: int = 10) -> int:
        v = _ints(fields.get(key, ""), base)
        return v[0] if v else 0

    def hexmask(key: str) -> int:
        try:
            return int(fields.get(key, "0") or "0", 16)
        except ValueError:
            problems.append(f"bad {key}")
            return 0

    return Status(
        name=fields.get("Name", ""),
        pid=num("Pid"),
        ppid=num("PPid"),
        nspid=_ints(fields.get("NSpid", "")),
        uid=_ints(fields.get("Uid", "")),
        gid=_ints(fields.get("Gid", "")),
        threads=num("Threads"),
        vmrss_bytes=_kb(fields.get("VmRSS", "")),
        rss_anon_bytes=_kb(fields.get("RssAnon", "")),
        rss_file_bytes=_kb(fields.get("RssFile", "")),
        rss_shmem_bytes=_kb(fields.get("RssShmem", "")),
        vmswap_bytes=_kb(fields.get("VmSwap", "")),
        sigcgt=hexmask("SigCgt"),
        sigblk=hexmask("SigBlk"),
        sigign=hexmask("SigIgn"),
        state=fields.get("State", "")[:1],
        fields=fields,
        problems=tuple(problems),
    )


def parse_thread_syscall(data: bytes) -> int | None:
    """Stack pointer from /proc/PID/task/TID/syscall: "nr a1..a6 sp pc", "-1 sp pc", or "running"."""
    toks = data.split()
    if len(toks) == 9 or len(toks) == 3:
        try:
            sp = int(toks[-2], 16)
        except ValueError:
            return None
        return sp or None
    return None


# ---- readers -------------------------------------------------------------------------------------

P = ParamSpec("P")
T = TypeVar("T")


def _pid_alive(pid: int, proc_root: str) -> bool:
    return os.path.exists(f"{proc_root}/{pid}/stat")


def _exited(pid: int, proc_root: str) -> bool:
    """Gone, or a zombie / dead task (its mm released: per-mm files refuse even root with EACCES)."""
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as fh:
            raw = fh.read()
    except OSError:
        return True
    return parse_status(raw).state in ("Z", "X", "x")


def wrap_exceptions(fn: Callable[P, T]) -> Callable[P, T]:
    """Translate OS errors of a per-pid read into ProcessGone / AccessDenied (psutil's pattern)."""

    sig = inspect.signature(fn)

    def target(args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[int, str]:
        # Bound only on the error path: binding costs more than the read of a small /proc file.
        bound = sig.bind(*args, **kwargs)
        return int(bound.arguments["pid"]), str(bound.arguments.get("proc_root", "/proc"))  # type: ignore[call-overload]

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except PermissionError as exc:
            pid, proc_root = target(args, kwargs)
            # Confirmed, not assumed (psutil's zombie rule): an exiting process refuses its files.
            if _exited(pid, proc_root):
                raise ProcessGone(pid) from None
            raise AccessDenied(pid, str(exc.filename or "")) from None
        except (FileNotFoundError, ProcessLookupError) as exc:
            pid, proc_root = target(args, kwargs)
            if not _pid_alive(pid, proc_root):
                raise ProcessGone(pid) from None
            raise exc
        except OSError as exc:
            # ESRCH from reading smaps of a process that exited between open() and read().
            pid, proc_root = target(args, kwargs)
            if exc.errno == errno.ESRCH or not _pid_alive(pid, proc_root):
                raise ProcessGone(pid) from None
            raise

    return wrapper


@wrap_exceptions
def read_file(pid: int, name: str, proc_root: str = "/proc") -> bytes:
    with open(f"{proc_root}/{pid}/{name}", "rb") as fh:
        return fh.read()


def read_smaps(pid: int, proc_root: str = "/proc") -> SmapsResult:
    return parse_smaps(read_file(pid, "smaps", proc_root))


def read_rollup(pid: int, proc_root: str = "/proc") -> dict[str, int]:
    return parse_rollup(read_file(pid, "smaps_rollup", proc_root))[0]


def read_maps(pid: int, proc_root: str = "/proc") -> SmapsResult:
    return parse_maps(read_file(pid, "maps", proc_root))


def read_status(pid: int, proc_root: str = "/proc") -> Status:
    return parse_status(read_file(pid, "status", proc_root))


def read_comm(pid: int, proc_root: str = "/proc") -> str:
    return read_file(pid, "comm", proc_root).decode("utf-8", "replace").rstrip("\n")


def read_cmdline(pid: int, proc_root: str = "/proc") -> list[str]:
    raw = read_file(pid, "cmdline", proc_root)
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def list_pids(proc_root: str = "/proc") -> list[int]:
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


@wrap_exceptions
def list_tids(pid: int, proc_root: str = "/proc") -> list[int]:
    return sorted(int(n) for n in os.listdir(f"{proc_root}/{pid}/task") if n.isdigit())


def thread_stack_pointers(pid: int, proc_root: str = "/proc", retries: int = 3) -> dict[int, int | None]:
    """Each thread's user stack pointer, from task/TID/syscall (needs ptrace-read access, e.g. root).

    A thread that is on a CPU right now reads "running"; it is retried a few times because most threads
    of a server are blocked most of the time. Threads that vanish mid-walk are skipped (psutil's rule).
    """
    out: dict[int, int | None] = {}
    for tid in list_tids(pid, proc_root):
        sp: int | None = None
        for _ in range(retries):
            try:
                with open(f"{proc_root}/{pid}/task/{tid}/syscall", "rb") as fh:
                    sp = parse_thread_syscall(fh.read())
            except (FileNotFoundError, ProcessLookupError):
                break
            except PermissionError as exc:
                if _exited(pid, proc_root):
                    raise ProcessGone(pid) from None
                raise AccessDenied(pid, "task/syscall (needs CAP_SYS_PTRACE)") from exc
            except OSError:
                break
            if sp is not None:
                break
            os.sched_yield()
        else:
            out[tid] = None
            continue
        if sp is not None or os.path.exists(f"{proc_root}/{pid}/task/{tid}"):
            out[tid] = sp
    if not out and not _pid_alive(pid, proc_root):
        raise ProcessGone(pid)
    return out
