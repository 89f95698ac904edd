"""NMT source: parse `VM.native_memory summary|summary.diff|detail` and `System.map` text into facts.

Pure functions from the text a JVM sent us (untrusted) to frozen dataclasses; nothing here raises on
odd input. Formats handled (all seen in real output, see tests):
- JDK 8/11: no "malloc:/mmap:" totals, "(thread #N)", "Internal" holds direct buffers on 8 only;
- JDK 17: "malloc:"/"mmap:" total lines, "(at peak)" / "(peak=...)" annotations;
- JDK 21: "threads #", "GCCardSet", "Unknown", "peak=" inside the mmap parenthesis;
- JDK 25: "tag=NAME" inside malloc parentheses, a "readonly=" figure, diff totals on their own lines;
- any scale: "KB"/"MB"/"GB" suffixes, or none at all for scale=1/b (bytes). Coarse scales truncate, so
  each result records the largest unit seen (`resolution_bytes`).
Diff output ("+12KB"/"-4KB" after a figure) keeps the delta beside each figure. JDK 17 prints some
deltas without a unit ("arena=36KB +5"): such a delta takes the unit of the figure before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "NmtCategory", "NmtReport", "NmtRegion", "NmtVirtualMap", "SystemMapEntry", "SystemMap",
    "parse_summary", "parse_detail_regions", "parse_system_map", "nmt_disabled",
    "SYSTEM_MAP_TAGS", "UNITS",
]

UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}

_FIG_RE = re.compile(
    r"(?P<key>[A-Za-z][A-Za-z ]{0,40}?)\s*=\s*(?P<val>\d{1,30})(?P<unit>KB|MB|GB|B)?"
    r"(?:\s+(?P<dsign>[+-])(?P<dval>\d{1,30})(?P<dunit>KB|MB|GB|B)?(?![\w.%]))?"
)
_COUNT_RE = re.compile(r"#(?P<val>\d+)(?:\s+(?P<dsign>[+-])(?P<dval>\d+))?")
_CAT_RE = re.compile(r"^-\s*(?P<name>[A-Za-z][A-Za-z0-9 ]{0,60}?)\s*\((?P<body>.*)\)\s*$")
_TOTAL_RE = re.compile(r"^Total:\s*(?P<body>.*)$")
_MAX_NAME = 64
# Real NMT / System.map lines are well under 1 KiB (System.map paths excepted); longer ones are skipped
# so a hostile reply cannot make the regexes work quadratically.
_MAX_LINE = 8192


@dataclass(frozen=True, slots=True)
class NmtCategory:
    """One NMT category. `figures` holds every figure in bytes, keyed like "mmap_committed"; `deltas`
    the same keys for summary.diff output. Counts ("#N") are kept under "<prefix>_count"."""

    name: str
    reserved_bytes: int
    committed_bytes: int
    figures: dict[str, int] = field(default_factory=dict)
    deltas: dict[str, int] = field(default_factory=dict)

    @property
    def malloc_bytes(self) -> int:
        return self.figures.get("malloc", 0)

    @property
    def arena_bytes(self) -> int:
        return self.figures.get("arena", 0)

    @property
    def mmap_committed_bytes(self) -> int:
        # Thread stacks are mmap'd too; NMT reports them under "stack:" instead of "mmap:".
        return self.figures.get("mmap_committed", 0) + self.figures.get("stack_committed", 0)

    @property
    def mmap_reserved_bytes(self) -> int:
        return self.figures.get("mmap_reserved", 0) + self.figures.get("stack_reserved", 0)

    @property
    def malloc_backed_bytes(self) -> int:
        """Bytes this category holds in malloc'd memory: malloc + arenas (arena chunks are malloc'd)
        + NMT's own tracking overhead (malloc headers)."""
        return self.malloc_bytes + self.arena_bytes + self.figures.get("tracking_overhead", 0)


@dataclass(frozen=True, slots=True)
class NmtReport:
    enabled: bool
    is_diff: bool
    categories: tuple[NmtCategory, ...]
    total: dict[str, int]
    total_deltas: dict[str, int]
    resolution_bytes: int
    problems: tuple[str, ...]

    def category(self, name: str) -> NmtCategory | None:
        for c in self.categories:
            if c.name == name:
                return c
        return None

    def to_json(self) -> dict:
        out: dict = {
            "total": dict(self.total),
            "resolution_bytes": self.resolution_bytes,
            "categories": {
                c.name: {"reserved_bytes": c.reserved_bytes, "committed_bytes": c.committed_bytes,
                         "malloc_bytes": c.malloc_bytes, "arena_bytes": c.arena_bytes,
                         "mmap_committed_bytes": c.mmap_committed_bytes,
                         "mmap_reserved_bytes": c.mmap_reserved_bytes}
                for c in self.categories
            },
        }
        if self.is_diff:
            out["total_deltas"] = dict(self.total_deltas)
            for c in self.categories:
                out["categories"][c.name]["deltas"] = dict(c.deltas)
        return out


def nmt_disabled(text: str) -> bool:
    return "Native memory tracking is not enabled" in text or "NMT is not enabled" in text


def _prefix_of(body: str) -> str:
    """The figure group a parenthesised line describes: "malloc", "mmap", "stack", "arena", ..."""
    b = body.strip().lstrip("(").strip()
    for key in ("mmap:", "stack:", "malloc:"):
        if b.startswith(key):
            return key[:-1]
    m = re.match(r"([A-Za-z][A-Za-z ]{0,40}?)\s*=", b)
    if m:
        return m.group(1).strip().lower().replace(" ", "_")
    return ""


def _figures(body: str, prefix: str, unit_seen: list[int]) -> tuple[dict[str, int], dict[str, int]]:
    figs: dict[str, int] = {}
    deltas: dict[str, int] = {}
    for m in _FIG_RE.finditer(body):
        key = m.group("key").strip().lower().replace(" ", "_")
        if len(key) > _MAX_NAME:
            continue
        unit = UNITS[m.group("unit") or ""]
        unit_seen.append(unit)
        if not prefix or key == prefix or (key == "peak" and prefix.endswith("_peak")):
            full = prefix or key
        else:
            full = f"{prefix}_{key}"
        figs.setdefault(full, int(m.group("val")) * unit)
        if m.group("dsign"):
            dunit = UNITS[m.group("dunit")] if m.group("dunit") else unit
            d = int(m.group("dval")) * dunit
            deltas.setdefault(full, -d if m.group("dsign") == "-" else d)
    cm = _COUNT_RE.search(body)
    if cm and prefix:
        figs.setdefault(f"{prefix}_count", int(cm.group("val")))
        if cm.group("dsign"):
            d = int(cm.group("dval"))
            deltas.setdefault(f"{prefix}_count", -d if cm.group("dsign") == "-" else d)
    return figs, deltas


def parse_summary(text: str) -> NmtReport:
    """Parse summary, summary.diff, or the summary part of detail / detail.diff output."""
    problems: list[str] = []
    if nmt_disabled(text):
        return NmtReport(False, False, (), {}, {}, 1, ("native memory tracking is not enabled",))
    cats: list[NmtCategory] = []
    total: dict[str, int] = {}
    total_deltas: dict[str, int] = {}
    units: list[int] = []
    is_diff = False
    cur: dict | None = None
    in_total = False
    sub = ""  # Class's "Metadata" / "Class space" sub-blocks

    def flush() -> None:
        if cur is not None:
            cats.append(NmtCategory(cur["name"], cur["figs"].get("reserved", 0), cur["figs"].get("committed", 0),
                                    cur["figs"], cur["deltas"]))

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) > _MAX_LINE:
            problems.append("overlong line skipped")
            continue
        if line.startswith(("Virtual memory map", "Details:")):
            break
        tm = _TOTAL_RE.match(line)
        if tm:
            flush()
            cur = None
            in_total = True
            f, d = _figures(tm.group("body"), "", units)
            total.update(f)
            total_deltas.update(d)
            continue
        cm = _CAT_RE.match(line)
        if cm:
            flush()
            in_total = False
            sub = ""
            name = cm.group("name").strip()[:_MAX_NAME]
            body = cm.group("body")
            f, d = _figures(body, "", units)
            if "reserved" not in f or "committed" not in f:
                problems.append(f"category {name!r}: no reserved/committed figures")
                cur = None
                continue
            cur = {"name": name, "figs": f, "deltas": d}
            continue
        if in_total and cur is None:
            # Total breakdown lines: "malloc: 107461KB #8817", "mmap:   reserved=..., committed=...",
            # JDK 25 diff: "malloc=131524KB +24891KB #13672 +2335".
            lm = re.match(r"^(malloc|mmap)\s*[:=]?\s*(.*)$", line)
            if lm:
                key, rest = lm.group(1), lm.group(2)
                if key == "malloc" and re.match(r"^\d", rest):
                    rest = "malloc=" + rest
                f, d = _figures(rest, key, units)
                total.update(f)
                total_deltas.update(d)
            continue
        if cur is None:
            continue
        if not line.startswith("(") and not line.startswith(":"):
            continue
        inner = line.lstrip(":").strip()
        head = inner.lstrip("(").strip().rstrip(")").strip().rstrip(":").strip()
        if head in ("Metadata", "Class space"):
            sub = "metadata" if head == "Metadata" else "class_space"
            continue
        # A line may hold several groups: "(malloc=45KB #172) (peak=53KB #176)".
        groups = re.findall(r"\(([^()]*)\)", inner) or [inner]
        first_prefix = ""
        for g in groups:
            prefix = _prefix_of(g)
            if g.startswith("  ") and sub and prefix in ("reserved", "used", "free", "waste", "committed"):
                prefix = sub
            elif prefix in ("peak", "at_peak", "") and first_prefix:
                prefix = f"{first_prefix}_peak"
            elif prefix == "tracking_overhead":
                prefix = "tracking_overhead"
            if re.match(r"^\s*threads?\s*#", g):
                cm2 = _COUNT_RE.search(g)
                if cm2:
                    cur["figs"].setdefault("threads_count", int(cm2.group("val")))
                    if cm2.group("dsign"):
                        d = int(cm2.group("dval"))
                        cur["deltas"].setdefault("threads_count", -d if cm2.group("dsign") == "-" else d)
                continue
            if prefix == "classes" or g.strip().startswith(("classes", "instance classes")):
                cm2 = _COUNT_RE.search(g)
                if cm2:
                    cur["figs"].setdefault("classes_count", int(cm2.group("val")))
                continue
            f, d = _figures(g, prefix, units)
            for k, v in f.items():
                cur["figs"].setdefault(k, v)
            for k, v in d.items():
                cur["deltas"].setdefault(k, v)
            if not first_prefix:
                first_prefix = prefix
        if any(d for d in cur["deltas"].values()):
            is_diff = True
    flush()
    if total_deltas or any(c.deltas for c in cats):
        is_diff = True
    if not cats and not total:
        problems.append("no NMT categories found")
    names = [c.name for c in cats]
    if len(set(names)) != len(names):
        problems.append("duplicate NMT category names")
    return NmtReport(True, is_diff, tuple(cats), total, total_deltas, max(units, default=1), tuple(problems))


# ---- detail: "Virtual memory map" -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NmtRegion:
    """A reserved region of one NMT category and its committed sub-ranges (half-open [start, end))."""

    start: int
    end: int
    category: str
    committed: tuple[tuple[int, int], ...]

    @property
    def committed_bytes(self) -> int:
        return sum(e - s for s, e in self.committed)


@dataclass(frozen=True, slots=True)
class NmtVirtualMap:
    regions: tuple[NmtRegion, ...]
    problems: tuple[str, ...]


_RES_RE = re.compile(
    r"^\[0x(?P<s>[0-9a-fA-F]+)\s*-\s*0x(?P<e>[0-9a-fA-F]+)\]\s+reserved(?P<and> and committed)?\s+"
    r"(?P<size>\d+)(?P<unit>KB|MB|GB|B)?\s+for\s+(?P<cat>[A-Za-z][A-Za-z0-9 ]{0,60}?)(?:\s+from)?\s*$")
_COM_RE = re.compile(
    r"^\[0x(?P<s>[0-9a-fA-F]+)\s*-\s*0x(?P<e>[0-9a-fA-F]+)\]\s+committed\s+(?P<size>\d+)(?P<unit>KB|MB|GB|B)?"
    r"(?:\s+from)?\s*$")
_ADDR_LIMIT = 1 << 64


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)


def parse_detail_regions(text: str) -> NmtVirtualMap:
    """Reserved regions with their committed ranges from the "Virtual memory map:" section.

    "reserved and committed" (JDK 21+) marks a region committed in full even when no committed
    sub-range is listed. Committed ranges are clipped to their reserved region; regions that overlap
    an earlier region are dropped as a problem (NMT never reports overlapping reservations).
    """
    problems: list[str] = []
    regions: list[NmtRegion] = []
    cur: dict | None = None
    in_map = False

    def flush() -> None:
        if cur is None:
            return
        com = [(max(s, cur["s"]), min(e, cur["e"])) for s, e in cur["com"]]
        com = [(s, e) for s, e in com if e > s]
        if cur["all"]:
            com = [(cur["s"], cur["e"])]
        regions.append(NmtRegion(cur["s"], cur["e"], cur["cat"], _merge(com)))

    for raw in text.splitlines():
        line = raw.strip()
        if len(line) > _MAX_LINE:
            continue
        if not in_map:
            if line.startswith("Virtual memory map"):
                in_map = True
            continue
        if line.startswith("Details:"):
            break
        if not line.startswith("[0x"):
            continue
        rm = _RES_RE.match(line)
        if rm:
            flush()
            s, e = int(rm.group("s"), 16), int(rm.group("e"), 16)
            if not (0 <= s < e <= _ADDR_LIMIT):
                problems.append(f"bad reserved range {line[:60]!r}")
                cur = None
                continue
            cur = {"s": s, "e": e, "cat": rm.group("cat").strip()[:_MAX_NAME], "com": [],
                   "all": bool(rm.group("and"))}
            continue
        cmm = _COM_RE.match(line)
        if cmm:
            s, e = int(cmm.group("s"), 16), int(cmm.group("e"), 16)
            if cur is None or not (0 <= s < e <= _ADDR_LIMIT):
                problems.append(f"committed range outside a reserved region: {line[:60]!r}")
                continue
            if s < cur["s"] or e > cur["e"]:
                problems.append(f"committed range sticks out of its reserved region: {line[:60]!r}")
            cur["com"].append((s, e))
            continue
        # "[0x00007f...] Symbol+0x12" call-stack frames: nothing to keep.
    flush()
    if not in_map:
        problems.append("no \"Virtual memory map\" section (NMT is not in detail mode)")
    regions.sort(key=lambda r: r.start)
    kept: list[NmtRegion] = []
    for r in regions:
        if kept and r.start < kept[-1].end:
            problems.append(f"overlapping NMT regions at {r.start:#x}")
            continue
        kept.append(r)
    return NmtVirtualMap(tuple(kept), tuple(problems))


# ---- System.map (JDK 21+) --------------------------------------------------------------------------

# System.map's "vm info" tags -> the NMT category names of the summary report.
SYSTEM_MAP_TAGS = {
    "JAVAHEAP": "Java Heap", "CLASS": "Class", "META": "Metaspace", "CODE": "Code", "GC": "GC",
    "CARDTBL": "GC", "CDS": "Shared class space", "STACK": "Thread Stack", "INTERN": "Internal",
    "POLL": "Safepoint", "JDK": "Other", "TEST": "Test",
}


@dataclass(frozen=True, slots=True)
class SystemMapEntry:
    start: int
    end: int
    prot: str
    rss_bytes: int
    tag: str  # raw tag ("JAVAHEAP", "STACK-4806-late-3", "-")
    category: str | None  # NMT category name, None for untagged mappings
    path: str


@dataclass(frozen=True, slots=True)
class SystemMap:
    entries: tuple[SystemMapEntry, ...]
    problems: tuple[str, ...]


_SM_RE = re.compile(r"^0x(?P<s>[0-9a-fA-F]+)-0x(?P<e>[0-9a-fA-F]+)\s+(?P<rest>.*)$")


def parse_system_map(text: str) -> SystemMap:
    problems: list[str] = []
    out: list[SystemMapEntry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if len(raw) > _MAX_LINE:
            problems.append(f"line {lineno}: overlong line skipped")
            continue
        m = _SM_RE.match(raw.strip())
        if not m:
            continue
        toks = m.group("rest").split(None, 7)
        # vsize prot rss hugetlb pgsz notes info file
        if len(toks) < 7:
            problems.append(f"line {lineno}: too few columns")
            continue
        try:
            s, e, rss = int(m.group("s"), 16), int(m.group("e"), 16), int(toks[2])
        except ValueError:
            problems.append(f"line {lineno}: bad number")
            continue
        if not (0 <= s < e <= _ADDR_LIMIT) or rss < 0:
            problems.append(f"line {lineno}: bad range")
            continue
        if len(toks) >= 8:
            info, path = toks[6], toks[7]
        else:
            info, path = toks[5], toks[6]
        base = info.split(",")[0]
        key = "STACK" if base.startswith("STACK-") else base
        cat = SYSTEM_MAP_TAGS.get(key)
        if cat is None and key != "-":
            problems.append(f"line {lineno}: unknown tag {key[:20]!r}")
        if "," in info:
            problems.append(f"line {lineno}: several tags {info[:40]!r}; used the first")
        out.append(SystemMapEntry(s, e, toks[1][:4], rss, info[:_MAX_NAME], cat,
                                  "" if path.strip() == "-" else path.strip()))
    if not out:
        problems.append("no mappings in System.map output")
    return SystemMap(tuple(out), tuple(problems))
