"""The runtime interface: what one runtime package (jvm, go, …) gives attribution and the presenters.

A runtime is recognised by `detect` from facts the snapshot already read, turns the runtime-neutral
attribution into its own categories with `refine`, and keeps its raw figures in
`Breakdown.runtime_details` under keys it names itself (they become top-level keys of the snapshot
JSON, which is how the JVM's `"nmt"` key is produced). Presenters ask its capabilities
(`needs_attach`, `missing_figures`, `details_table`, `gauges`) instead of comparing runtime names, so
a new runtime needs no presenter change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nativewatch.attribute import Attribution, ManagedHeap
from nativewatch.model import Breakdown
from nativewatch.sources.procfs import Mapping
from nativewatch.sources.procstat import process_age_s

__all__ = ["ProcessInfo", "RefineContext", "Refinement", "DetailGauge", "DetailTable", "Runtime", "detail_section",
           "detail_figure", "starting_age"]

# A process sampled this soon after exec (soak's first sample of the command it started) may not have
# made its managed heap yet: a runtime says so instead of "unknown build".
STARTING_S = 3.0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What detection may look at. Reading more (the executable) is the runtime's own business."""

    pid: int
    proc_root: str
    comm: str
    cmdline: tuple[str, ...]
    mappings: Sequence[Mapping]


@dataclass(frozen=True, slots=True)
class RefineContext:
    pid: int
    proc_root: str
    mappings: Sequence[Mapping]
    # False: passive reads only. The process must not be signalled or connected to (top's default scan).
    attach: bool
    timeout_s: float
    cgroup_root: str = "/sys/fs/cgroup"  # where the process's cgroup is read (the agent: the host's)


@dataclass(frozen=True, slots=True)
class Refinement:
    """The runtime's view: categories summing to the same Rss as the base attribution."""

    categories: dict[str, int]
    sources: tuple[str, ...]  # replaces the base sources: the runtime knows which of them it kept
    problems: tuple[str, ...] = ()  # added to the base attribution's problems
    details: dict[str, Any] = field(default_factory=dict)  # -> Breakdown.runtime_details


@dataclass(frozen=True, slots=True)
class DetailGauge:
    """A Prometheus family derived from runtime details: one series per process and key."""

    name: str
    help: str
    label: str  # the label beside the process labels, e.g. "nmt_category"; "" for one series a process
    values: Callable[[dict[str, Any]], Iterable[tuple[str, float]]]
    counter: bool = False  # a monotonic total (rendered as a counter, `_total`) instead of a gauge


def starting_age(ctx: RefineContext) -> float | None:
    """The process's age in seconds when it started less than STARTING_S ago, else None."""
    age = process_age_s(ctx.pid, ctx.proc_root)
    return age if age is not None and age < STARTING_S else None


def detail_section(details: dict[str, Any], section: str) -> dict[str, Any]:
    """details[section] when it is a dict: details may come back from JSON (evidence, store), so shapes
    are checked rather than trusted."""
    v = details.get(section)
    return v if isinstance(v, dict) else {}


def detail_figure(section: str, key: str) -> Callable[[dict[str, Any]], Iterator[tuple[str, float]]]:
    """DetailGauge values of one number, details[section][key], when it is one."""
    def values(details: dict[str, Any]) -> Iterator[tuple[str, float]]:
        v = detail_section(details, section).get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            yield "", float(v)
    return values


@dataclass(frozen=True, slots=True)
class DetailTable:
    """Runtime figures as a presenter-neutral table: a name column, then byte columns; rows in order."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[int, ...]], ...]


class Runtime:
    """Defaults describe a runtime that adds nothing to the native view; implementations override."""

    name: str = ""  # the `runtime` label and JSON value
    # True when its full view needs talking to the process (attach, signals): presenters then know a
    # passive scan shows less, and the agent paces and backs off those attaches.
    needs_attach: bool = False
    managed_heap: ManagedHeap | None = None
    gauges: tuple[DetailGauge, ...] = ()

    def detect(self, info: ProcessInfo) -> bool:
        return False

    def refine(self, ctx: RefineContext, base: Attribution) -> Refinement:
        return Refinement(dict(base.categories), tuple(base.sources))

    def missing_figures(self, bd: Breakdown) -> str | None:
        """Why `bd` lacks this runtime's own split and how to get it; None when nothing is missing."""
        return None

    def details_table(self, details: dict[str, Any]) -> DetailTable | None:
        return None

    def heap_limit(self, details: dict[str, Any]) -> int | None:
        """The managed heap's limit from this runtime's details (explain's RSS-vs-limit check), if known."""
        return None

    def __repr__(self) -> str:
        return f"<runtime {self.name}>"
