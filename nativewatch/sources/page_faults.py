"""Resident growth by call stack from sampled first-touch page faults (bpf/page_faults.c).

Every page a process writes for the first time is a fault; a sample of those faults with the user
stack points at the code that grows RSS, without any malloc uprobe. Counts are read and cleared from
the kernel maps on each `collect()` and folded per pid into symbolized stacks with estimated bytes
(samples x SAMPLE_EVERY x page size). Symbolization happens while the process is alive (it is gone by
the time an OOM post-mortem is written).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nativewatch.errors import AccessDenied, ProcessGone
from nativewatch.malloc_profile.symbolize import Symbolizer
from nativewatch.sources.bpf import ProgramSpec, load_one, program_text
from nativewatch.sources.bpfsys import RingBuffer
from nativewatch.sources.fault_walks import FaultCopy, FaultWalks, parse_copy
from nativewatch.unwind.stackcopy import check_stack_copy

__all__ = ["FaultStack", "PageFaultSampler", "top_stacks", "with_return_hint"]

log = logging.getLogger(__name__)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Stack copies per sample, as `profile` takes them. The ring buffer (2 MiB: ~250 copies) is drained
# every 0.2 s, and a stack seen once is counted in the kernel from then on, so copies are the
# stacks new to a process; beyond, samples keep their frame-pointer stacks (counted).
DEFAULT_STACK_COPY = 8192
DEFAULT_RING_PAGES = 512
_MAPS = ("fault_counts", "fault_stacks", "ret_hints", "fault_stats")
_COPY_MAPS = ("fault_copies", "fault_walks", "walk_counts")
_FAULT_KEY = struct.Struct("Ii")  # struct fault_key_t {u32 tgid; s32 stack_id}
_U32, _U64 = struct.Struct("I"), struct.Struct("Q")


@dataclass(frozen=True, slots=True)
class FaultStack:
    frames: tuple[str, ...]  # leaf-most first
    bytes: int  # estimated resident growth
    samples: int

    def to_json(self) -> dict[str, Any]:
        return {"frames": list(self.frames), "bytes": self.bytes, "samples": self.samples}


def top_stacks(per_stack: Counter[tuple[str, ...]], sample_every: int, n: int = 10) -> list[FaultStack]:
    return [FaultStack(frames, count * sample_every * PAGE_SIZE, count)
            for frames, count in per_stack.most_common(n)]


# libc's string/memory routines are leaves without a frame pointer: a frame-pointer walk from inside
# them skips their caller, which is usually the function that grows memory (memset of a new buffer).
_FRAMELESS_LEAF = re.compile(r"^_*(?:mem|str|stp|wmem|wcs)[a-z0-9_]* \(")


def _func(frame: str) -> str:
    return frame.split(" (", 1)[0]


def with_return_hint(frames: Sequence[str], hint: str | None) -> list[str]:
    """Put back the caller a frameless libc leaf hides: `hint` is the symbolized word at the user stack
    pointer at the fault (the return address when the leaf pushed nothing). Only for such leaves, only
    a resolved function name, and never a duplicate of the next frame."""
    out = list(frames)
    if (not out or hint is None or hint.startswith("0x") or not _FRAMELESS_LEAF.match(out[0])
            or (len(out) > 1 and _func(out[1]) == _func(hint)) or _func(hint) == _func(out[0])):
        return out
    return [out[0], hint, *out[1:]]


class _Symbols:
    """Per-pid symbolizers (nativewatch's own, malloc_profile.symbolize), dropped when the pid goes.

    Not bcc's SymbolCache: libbcc before 0.33 closes a random descriptor of the calling process each
    time one is made, refreshed or freed (ProcSyms::ModulePath can leave its fd uninitialised, and its
    destructor closes it). The symbolizers hold no descriptor (hold_files=False): a mapped file is
    opened through map_files only to parse it, and the parsed image stays in elfimage's bounded cache
    keyed by build id / inode identity, shared by every process that maps it. A process that has died
    meanwhile still resolves addresses in every object parsed while it lived (what an OOM post-mortem
    needs: its growing code was symbolized scan after scan). Mappings are re-read, at most every
    REFRESH_S, when an address falls outside them (a library loaded since). At most MAX_PROCESSES
    symbolizers are kept, least recently used dropped first."""

    REFRESH_S = 1.0
    MAX_PROCESSES = 512

    def __init__(self, proc_root: str = "/proc", clock: Callable[[], float] = time.monotonic) -> None:
        self.proc_root = proc_root
        self._clock = clock
        self._caches: OrderedDict[int, Symbolizer] = OrderedDict()
        self._refreshed: dict[int, float] = {}

    def get(self, pid: int) -> Symbolizer:
        sym = self._caches.get(pid)
        if sym is None:
            while len(self._caches) >= self.MAX_PROCESSES:
                self.forget(next(iter(self._caches)))
            sym = self._caches[pid] = Symbolizer(pid, self.proc_root, hold_files=False)
            self._refreshed[pid] = self._clock()
        else:
            self._caches.move_to_end(pid)
        return sym

    def frames(self, pid: int, addrs: Sequence[int], *, first_is_return: bool = False) -> list[str]:
        """"function (object)" per address, leaf first: the first address is an exact instruction
        pointer unless first_is_return, the others are return addresses."""
        sym = self.get(pid)
        now = self._clock()
        if now - self._refreshed.get(pid, 0.0) >= self.REFRESH_S and any(
                not sym.is_executable(a - 1 if (i or first_is_return) and a else a)
                for i, a in enumerate(addrs)):
            self._refreshed[pid] = now
            with contextlib.suppress(ProcessGone, AccessDenied, OSError):
                sym.refresh()
        return sym.frames(addrs, first_is_return=first_is_return)

    def forget(self, pid: int) -> None:
        self._refreshed.pop(pid, None)
        sym = self._caches.pop(pid, None)
        if sym is not None:
            sym.close()

    def forget_all_but(self, alive: set[int]) -> None:
        for pid in [p for p in self._caches if p not in alive]:
            self.forget(pid)

    def sizes(self) -> dict[str, int]:
        caches = list(self._caches.values())
        return {"symbolizers": len(caches), "symbolizer_regions": sum(c.regions() for c in caches),
                "symbolizer_open_files": sum(c.open_files() for c in caches)}

    def close(self) -> None:
        self.forget_all_but(set())


class PageFaultSampler:
    """Load, poll and read the page-fault sampler. Raises SourceUnavailable from the constructor."""

    MAX_STACKS_PER_PID = 64

    def __init__(self, sample_every: int = 64, *, max_entries: int = 16384, stack_entries: int = 8192,
                 proc_root: str = "/proc", stack_copy: int = DEFAULT_STACK_COPY,
                 ring_pages: int = DEFAULT_RING_PAGES) -> None:
        check_stack_copy(stack_copy)
        if ring_pages < 16 or ring_pages & (ring_pages - 1):
            raise ValueError(f"ring pages must be a power of two >= 16, not {ring_pages}")
        self.sample_every = sample_every
        self.stack_copy = stack_copy
        self.defines: dict[str, int | str] = {"SAMPLE_EVERY": sample_every, "MAX_ENTRIES": max_entries,
                                              "STACK_ENTRIES": stack_entries, "SKIP_TGID": os.getpid()}
        if stack_copy:
            self.defines.update({"STACK_COPY": stack_copy, "RING_PAGES": ring_pages})
        # Compiled and attached by a short-lived child: the agent reads the maps by descriptor and
        # never keeps bcc's compiler resident (sources/bpfchild.py).
        self.prog = load_one(ProgramSpec("page_faults.c", self.defines, _MAPS + (_COPY_MAPS if stack_copy else ())))
        self.symbols = _Symbols(proc_root)
        self.per_pid: dict[int, Counter[tuple[str, ...]]] = {}
        self.skipped_samples = 0  # samples of processes not worth a symbol cache (see collect)
        self._copies: list[FaultCopy] = []
        self.walks: FaultWalks | None = None
        self.ring: RingBuffer | None = None
        # Copies are drained from the ring every DRAIN_S by a thread (a scan is 10 s; the ring holds
        # ~250), unwound at once for the processes collect() follows (so the kernel learns their walks
        # within a second), held raw for the others until collect() decides.
        self._lock = threading.Lock()
        self._follow: set[int] = set()
        self._window: Counter[int] = Counter()  # copies per pid since the last collect
        self._held: list[FaultCopy] = []
        self._pending: Counter[tuple[int, tuple[str, ...]]] = Counter()
        self._min_samples = 8
        self.copies_dropped = 0
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        if stack_copy:
            self.walks = FaultWalks(self._symbolizer, self.prog.map("fault_walks"))
            self.ring = RingBuffer(self.prog.map_fd("fault_copies"), self._on_copy)
            self._drainer = threading.Thread(target=self._drain_loop, name="fault-stack-copies", daemon=True)
            self._drainer.start()

    DRAIN_S = 0.2
    MAX_HELD = 256

    def _drain_loop(self) -> None:
        while not self._stop.wait(self.DRAIN_S):
            try:
                with self._lock:
                    self._drain_locked()
            except Exception:  # noqa: BLE001 - never let the drainer die; collect() drains too
                log.exception("page-fault stack copies")

    def _drain_locked(self) -> None:
        if self.ring is None or self.walks is None:
            return
        self.ring.poll()
        copies, self._copies = self._copies, []
        for c in copies:
            self._window[c.tgid] += 1
            if c.tgid in self._follow or self._window[c.tgid] >= self._min_samples:
                if self._held and self._window[c.tgid] == self._min_samples:
                    self._unwind_held(lambda pid, t=c.tgid: pid == t)
                self._pending[(c.tgid, self._unwind(c))] += 1
            elif len(self._held) < self.MAX_HELD:
                self._held.append(c)
            else:
                self.copies_dropped += 1

    def _unwind(self, c: FaultCopy) -> tuple[str, ...]:
        assert self.walks is not None
        try:
            return self.walks.add(c)
        except Exception:  # noqa: BLE001 - a pid that vanished mid-unwind
            return ("[unsymbolized]",)

    def _unwind_held(self, want: Callable[[int], bool]) -> None:
        keep: list[FaultCopy] = []
        for c in self._held:
            if want(c.tgid):
                self._pending[(c.tgid, self._unwind(c))] += 1
            else:
                keep.append(c)
        self._held = keep

    def _on_copy(self, data: bytes) -> None:
        c = parse_copy(data)
        if c is not None:
            self._copies.append(c)

    def _symbolizer(self, pid: int) -> Symbolizer | None:
        try:
            return self.symbols.get(pid)
        except Exception:  # noqa: BLE001 - a pid that vanished: no symbolizer
            return None

    def source(self) -> str:
        return program_text("page_faults.c", self.defines)

    def stats(self) -> dict[str, int]:
        sampled, full, lost, copy_lost = self.prog.map("fault_stats").u64s(4)
        out = {"sampled": sampled, "map_full": full, "stack_lost": lost}
        if self.walks is not None:
            out.update({"stack_copies_lost": copy_lost, "stack_copies_dropped": self.copies_dropped,
                        "stacks_unwound": self.walks.unwound, "walks_handed_to_kernel": self.walks.handed_back})
        return out

    def _stack(self, stack_id: int) -> tuple[int, ...]:
        """The user stack's addresses, leaf first (the stack map's value ends at the first 0)."""
        raw = self.prog.map("fault_stacks").lookup(struct.pack("I", stack_id))
        if raw is None:
            return ()
        addrs = struct.unpack(f"{len(raw) // 8}Q", raw)
        n = addrs.index(0) if 0 in addrs else len(addrs)
        return addrs[:n]

    def collect(self, keep: set[int], interesting: set[int] | frozenset[int] = frozenset(),
                min_samples: int = 8) -> None:
        """Move kernel counts into per-pid symbolized stacks; drop every pid not in `keep`.

        `keep` holds live pids and recently vanished ones: a symbol cache made while a process was
        alive still resolves after it died, which is what an OOM post-mortem needs. Symbolizing costs
        a symbol cache per process, so only pids already followed, pids in `interesting` (the ones the
        agent exports) and pids with at least `min_samples` new samples (growing fast) are kept; the
        rest is counted in `skipped_samples`."""
        with self._lock:
            self._collect_locked(keep, interesting, min_samples)

    def _collect_locked(self, keep: set[int], interesting: set[int] | frozenset[int], min_samples: int) -> None:
        # Read-and-delete in batches: a fault counted meanwhile is returned or stays, never lost.
        raw = self.prog.map("fault_counts").pop_all()
        items = [(*_FAULT_KEY.unpack(k), _U64.unpack(v)[0]) for k, v in raw]
        walked: list[tuple[int, int, int]] = []
        if self.walks is not None:
            walked = self.walks.counted(self.prog.map("walk_counts").pop_all())
            self._min_samples = min_samples
            self._drain_locked()
        per_tgid: Counter[int] = Counter(self._window)
        for tgid, _sid, n in items:
            per_tgid[tgid] += n
        for tgid, _gid, n in walked:
            per_tgid[tgid] += n

        def wanted(tgid: int, n: int) -> bool:
            if tgid not in keep:
                return False
            if tgid not in self.per_pid and tgid not in interesting and per_tgid[tgid] < min_samples:
                self.skipped_samples += n
                return False
            return True

        if self.walks is not None:
            # known walks first: their group ids came from copies already unwound
            for tgid, gid, n in walked:
                if wanted(tgid, n):
                    self._count(tgid, self.walks.frames_of(gid) or ("[unsymbolized]",), n)
            self._unwind_held(lambda pid: pid in keep and (pid in self.per_pid or pid in interesting
                                                           or per_tgid[pid] >= min_samples))
            self.skipped_samples += len(self._held)
            for (tgid, frames), n in self._pending.items():
                if wanted(tgid, n):
                    self._count(tgid, frames, n)
            self._held, self._pending, self._window = [], Counter(), Counter()
        hints = {_U32.unpack(k)[0]: _U64.unpack(v)[0] for k, v in self.prog.map("ret_hints").pop_all()}
        resolved: dict[int, tuple[int, ...]] = {}
        for tgid, stack_id, n in items:
            if not wanted(tgid, n):
                continue
            frames: tuple[str, ...]
            if stack_id < 0:
                frames = ("[stack lost]",)
            else:
                addrs = resolved.get(stack_id)
                if addrs is None:
                    addrs = resolved[stack_id] = self._stack(stack_id)
                try:
                    if addrs:
                        # the hint is the word at the stack pointer: a return address if anything
                        hint = hints.get(stack_id)
                        hint_frame = (self.symbols.frames(tgid, [hint], first_is_return=True)[0]
                                      if hint else None)
                        frames = tuple(with_return_hint(self.symbols.frames(tgid, addrs), hint_frame))
                    else:
                        frames = ("[stack lost]",)
                except Exception:  # noqa: BLE001 - a pid that vanished mid-symbolization
                    frames = ("[unsymbolized]",)
            self._count(tgid, frames, n)
        self.prog.map("fault_stacks").clear()
        self.symbols.forget_all_but(keep)
        for pid in [p for p in self.per_pid if p not in keep]:
            del self.per_pid[pid]
            if self.walks is not None:
                self.walks.forget(pid)
        self._follow = set(self.per_pid) | set(interesting)

    def _count(self, tgid: int, frames: tuple[str, ...], n: int) -> None:
        per = self.per_pid.setdefault(tgid, Counter())
        per[frames] += n
        if len(per) > 2 * self.MAX_STACKS_PER_PID:
            self.per_pid[tgid] = Counter(dict(per.most_common(self.MAX_STACKS_PER_PID)))

    def forget(self, pid: int) -> None:
        with self._lock:
            self.per_pid.pop(pid, None)
            self._follow.discard(pid)
            self.symbols.forget(pid)
            if self.walks is not None:
                self.walks.forget(pid)

    def sizes(self) -> dict[str, int]:
        return {"fault_stack_pids": len(self.per_pid),
                "fault_stacks": sum(len(c) for c in self.per_pid.values()), **self.symbols.sizes(),
                **(self.walks.sizes() if self.walks is not None else {})}

    def top(self, pid: int, n: int = 10) -> list[FaultStack]:
        return top_stacks(self.per_pid.get(pid, Counter()), self.sample_every, n)

    def close(self) -> None:
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(10)
        with self._lock:
            if self.ring is not None:
                self.ring.close()
                self.ring = None
            self.symbols.close()
            self.prog.close()
