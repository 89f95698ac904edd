"""Agent settings: one frozen object, from defaults, an optional TOML file, then command-line overrides."""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativewatch.growth import DEFAULT_WINDOW_S, GrowthPolicy
from nativewatch.malloc_profile.governor import DEFAULT_MAX_OVERHEAD
from nativewatch.unwind.stackcopy import check_stack_copy

__all__ = ["AgentConfig", "ConfigError", "load_config", "parse_listen"]


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AgentConfig:
    listen: str = "127.0.0.1:9847"
    # Cheap sources (status RSS, cgroup counters) run every interval; a full smaps attribution of one
    # process runs at most every full_interval_s, an NMT attach at most every nmt_interval_s, and all
    # full work of one scan stops once it has used scan_budget_s of CPU (tracked pids excepted).
    interval_s: float = 10.0
    full_interval_s: float = 60.0
    nmt_interval_s: float = 300.0
    scan_budget_s: float = 1.0
    # Growth is judged by the one policy of nativewatch.growth (GrowthPolicy holds every default); these
    # settings override it. Unset (None) means the policy's default: an hour's window, a slow-leak
    # verdict after a quarter of it, fast verdicts over 2 and 5 minutes.
    window_s: float = DEFAULT_WINDOW_S
    min_leak_window_s: float | None = None
    min_leak_slope_bytes_per_second: float | None = None
    min_leak_fit: float | None = None
    fast_leak_verdicts: bool = True
    # A process whose RSS moved this much since its last full breakdown gets a new one at the next scan
    # (within the scan budget) instead of after full_interval_s: a fast leak then has a point per scan,
    # enough for a verdict in about 100 s at the default 10 s interval.
    moving_bytes: int = 1024 * 1024
    evidence_dir: Path = Path("/var/lib/nativewatch/evidence")
    state_dir: Path = Path("/var/lib/nativewatch")
    retention_s: float = 24 * 3600.0
    history_interval_s: float = 60.0  # how often the SQLite store gets a row per process
    track: tuple[int, ...] = ()
    top_k: int = 50
    top_sites: int = 20
    proc_root: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"
    bpf: bool = True
    page_fault_sample_every: int = 64
    page_fault_max_entries: int = 16384  # (pid, stack) counters in the kernel; overflow is counted
    page_fault_stack_entries: int = 8192
    # Bytes of user stack copied per page-fault sample and unwound with CFI, so code built without
    # frame pointers gets whole resident-growth stacks (0: frame pointers only); a stack already seen
    # is recognised in the kernel and not copied again.
    page_fault_stack_copy: int = 8192
    # Unwind tables (.eh_frame) of the objects those stacks run through, kept across scans: libc's is
    # ~0.3 MiB, libjvm.so's 2.4 MiB; an evicted object's is read again when next met.
    cfi_cache_bytes: int = 8 << 20
    # Parsed symbol tables of the objects the page-fault stacks run through, bounded by symbols
    # (~100 bytes each, measured on libLLVM: 35,383 symbols in 3.5 MiB): 65,536 is about 6.5 MiB;
    # libc is 9,500 symbols, libLLVM 36,700.
    symbol_cache_symbols: int = 65536
    # Evidence that could not be written (state dir read-only or full) waits in memory, retried every
    # scan; past this many documents the oldest is dropped and counted.
    evidence_pending_max: int = 64
    loopback_only: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_sha256: str | None = None
    auto_capture: bool = True
    # false: the agent never signals or connects to a JVM (no NMT: hsperfdata capacities only; no perf
    # map, so Java frames in captures stay [java: code cache]); passive reads only
    jvm_attach: bool = True
    # false: automatic captures never put the in-process sampler into a process (no ptrace stop, no
    # GOT patched): they use uprobes, which cost ~1 us a call instead of ~6 ns (README, "Capture
    # cost"); NATIVEWATCH_NO_INJECT=1 in the agent's environment does the same.
    inject: bool = True
    # Kubernetes Events on a pod when one of its containers is OOM-killed or gets a leak verdict (needs
    # the API server and RBAC create/patch on events).
    kubernetes_events: bool = True
    auto_capture_min_growth_bytes: int = 64 * 1024 * 1024
    auto_capture_duration_s: float = 30.0
    auto_capture_cooldown_s: float = 3600.0
    # Share of one core an automatic capture may cost its target before it stops early (0: no limit);
    # the reasoning for the default is in malloc_profile/governor.py.
    auto_capture_max_overhead: float | None = DEFAULT_MAX_OVERHEAD
    dead_grace_s: float = 120.0  # how long a vanished pid's history is kept for a late OOM event
    # At most this many vanished pids are kept meanwhile, the largest (the likeliest OOM victims):
    # a node where thousands of short-lived processes come and go must not hold all of them.
    dead_max: int = 256
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self) -> GrowthPolicy:
        """The growth policy these settings describe (fast windows no longer than the window)."""
        base = GrowthPolicy()
        overrides: dict[str, Any] = {"window_s": self.window_s, "min_window_s": self.min_leak_window_s}
        if self.min_leak_slope_bytes_per_second is not None:
            overrides["min_slope_bytes_per_second"] = self.min_leak_slope_bytes_per_second
        if self.min_leak_fit is not None:
            overrides["min_fit"] = self.min_leak_fit
        fast = [(w, r) for w, r in zip(base.fast_windows_s, base.fast_min_rise_bytes, strict=True)
                if w < self.window_s and self.fast_leak_verdicts]
        overrides["fast_windows_s"] = tuple(w for w, _ in fast)
        overrides["fast_min_rise_bytes"] = tuple(r for _, r in fast)
        return dataclasses.replace(base, **overrides)

    def validate(self) -> AgentConfig:
        host, _port = parse_listen(self.listen)
        if self.loopback_only and not _is_loopback(host):
            raise ConfigError(f"loopback_only is set but listen address {self.listen!r} is not loopback")
        if self.interval_s <= 0 or self.window_s <= 0:
            raise ConfigError("interval and window must be positive")
        bad = self.policy.problems()
        if bad:
            raise ConfigError("; ".join(bad))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if (self.basic_auth_user is None) != (self.basic_auth_password_sha256 is None):
            raise ConfigError("basic_auth_user and basic_auth_password_sha256 go together")
        if self.page_fault_sample_every < 1:
            raise ConfigError("page_fault_sample_every must be >= 1")
        if self.page_fault_max_entries < 1 or self.page_fault_stack_entries < 1:
            raise ConfigError("page_fault_max_entries and page_fault_stack_entries must be >= 1")
        try:
            check_stack_copy(self.page_fault_stack_copy)
        except ValueError as exc:
            raise ConfigError(f"page_fault_stack_copy: {exc}") from None
        if self.auto_capture_max_overhead is not None and not 0 <= self.auto_capture_max_overhead <= 64:
            raise ConfigError("auto_capture_max_overhead must be a share of one core, 0 for no limit")
        if self.dead_max < 0:
            raise ConfigError("dead_max must be >= 0")
        if self.symbol_cache_symbols < 1:
            raise ConfigError("symbol_cache_symbols must be >= 1")
        if self.evidence_pending_max < 1:
            raise ConfigError("evidence_pending_max must be >= 1")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_PATHS = {"evidence_dir", "state_dir", "tls_cert", "tls_key"}


def load_config(path: Path | None = None, **overrides: Any) -> AgentConfig:
    """Defaults, then the TOML file (top-level keys or an [agent] table), then non-None overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        values.update(raw.get("agent", raw))
    values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    known = {f.name for f in dataclasses.fields(AgentConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
    for key in _PATHS & set(values):
        values[key] = Path(values[key]) if values[key] is not None else None
    if "track" in values:
        values["track"] = tuple(int(p) for p in values["track"])
    return AgentConfig(**values).validate()
