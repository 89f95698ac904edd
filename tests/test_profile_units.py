"""Allocation-site profile pieces without eBPF: probe placement, sampling maths, pprof, symbols,
state file, diff (issue 3). Live processes are real; nothing is mocked."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import random
import subprocess
from pathlib import Path

import pytest
from conftest import build_c
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nativewatch.malloc_profile import placement, sampling
from nativewatch.malloc_profile.diff import delta_result, diff_profiles, load_profile
from nativewatch.malloc_profile.elfimage import DEBUG_BUILD_ID_DIR, load_image
from nativewatch.malloc_profile.pprof import encode_profile, read_pprof, write_pprof
from nativewatch.malloc_profile.resolve import probe_offset, resolve
from nativewatch.malloc_profile.result import ProfileResult, Site, sort_sites
from nativewatch.malloc_profile.state import running_top_sites, write_state
from nativewatch.malloc_profile.symbolize import Symbolizer, demangle, open_in_root, parse_perf_map

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("reading /proc/PID/map_files needs root")


# ---- probe placement ---------------------------------------------------------------------------
def test_probe_offset_skips_to_first_emulatable_instruction():
    push_rbx = b"\x53"
    assert probe_offset(push_rbx + b"\x90" * 8) == 0
    assert probe_offset(b"\xf3\x0f\x1e\xfa" + b"\x41\x54") == 4  # endbr64; push %r12
    # test %rdi,%rdi ; je rel32 (glibc free's head): the je is emulated, %rdi still intact
    assert probe_offset(b"\x48\x85\xff\x0f\x84\xbf\x00\x00\x00\x55", frozenset({7})) == 3
    # mov %rdi,%rax (rax not read by the probe) ; ja rel32
    assert probe_offset(b"\x48\x89\xf8\x0f\x87\x00\x00\x00\x00", frozenset({7})) == 3


def test_probe_offset_stops_before_an_instruction_that_clobbers_an_argument():
    # mov %rax,%rdi overwrites free's argument: stay at the entry
    assert probe_offset(b"\x48\x89\xc7\x55", frozenset({7})) == 0
    # mov disp32(%rip),%rdx is fine for free (rdx unused) but not for posix_memalign (size in rdx)
    code = b"\x48\x8b\x15\x00\x00\x00\x00\x55"
    assert probe_offset(code, frozenset({7})) == 7
    assert probe_offset(code, frozenset({7, 2})) == 0
    assert probe_offset(b"\x0f\x0b") == 0  # ud2: unknown, entry


@given(st.binary(max_size=64))
def test_probe_offset_never_crashes_and_stays_in_window(code):
    off = probe_offset(code)
    assert 0 <= off <= 32


def test_glibc_free_is_probed_past_its_single_stepped_first_instruction():
    needs_root()
    exe = build_c("leaky_sites.c", cflags=["-O2"])
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        plan = resolve(proc.pid)
        assert plan.provider_kind == "glibc" and plan.provider.endswith("libc.so.6")
        by = {p.symbol: p for p in plan.points}
        assert {"malloc", "free", "calloc", "realloc", "mmap", "munmap"} <= set(by)
        assert by["free"].file_offset > by["free"].entry_offset  # moved off `test %rdi,%rdi`
        with open(LIBC, "rb") as f:
            f.seek(by["free"].file_offset)
            first = f.read(2)
        assert first[0] in range(0x50, 0x58) or first[0] in range(0x70, 0x80) or first[:1] == b"\x0f"
        assert all(p.path.startswith(f"/proc/{proc.pid}/map_files/") for p in plan.points)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("preload,kind", [("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "jemalloc"),
                                          ("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "tcmalloc"),
                                          (None, "static")])
def test_resolve_finds_the_allocator_the_process_really_uses(preload, kind):
    needs_root()
    if kind == "static":
        exe = build_c("leaky_sites.c", cflags=["-O2", "-static"])
        env = dict(os.environ)
    else:
        exe = build_c("leaky_sites.c", cflags=["-O2"])
        env = {**os.environ, "LD_PRELOAD": preload}
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        plan = resolve(proc.pid)
        assert plan.provider_kind == kind
        syms = {p.symbol for p in plan.points}
        assert {"malloc", "free"} <= syms and ("mmap" in syms or "mmap64" in syms)
        if kind == "static":
            assert plan.skip_ranges  # allocator internals' own mmaps are not counted twice
    finally:
        proc.kill()
        proc.wait()


# ---- sampling ----------------------------------------------------------------------------------
def test_weight_table_is_size_over_probability():
    t = 65536
    w = sampling.weight_table(t)
    step = t // sampling.WEIGHT_STEPS
    assert w[0] == t  # a tiny allocation stands for one whole interval
    for i in (1, 100, 256, 1000, 4096):
        s = i * step
        assert w[i] == pytest.approx(s / (1 - math.exp(-s / t)), rel=1e-9, abs=1)
    assert w[4096] == pytest.approx(16 * t, rel=1e-6)  # p ~ 1 for huge allocations
    assert all(b >= a for a, b in zip(w, w[1:], strict=False))


def test_exp_table_mean_is_the_interval():
    t = 524288
    e = sampling.exp_table(t)
    assert len(e) == sampling.EXP_SLOTS
    assert sum(e) / len(e) == pytest.approx(t, rel=0.01)


def _kernel_estimate(sizes: list[int], t: int, rng: random.Random) -> float:
    """The BPF program's algorithm, step for step (countdown, table draw, interpolated weight)."""
    exp = sampling.exp_table(t)
    w = sampling.weight_table(t)
    step = max(1, t // sampling.WEIGHT_STEPS)
    rem = exp[rng.randrange(sampling.EXP_SLOTS)]
    total = 0
    for s in sizes:
        if rem > s:
            rem -= s
            continue
        rem = exp[rng.randrange(sampling.EXP_SLOTS)]
        if s >= 16 * t:
            total += s
        else:
            i = s // step
            total += w[i] + (w[i + 1] - w[i]) * (s - i * step) // step
    return total


def test_byte_sampling_scale_back_is_unbiased():
    """Mixed sizes from 16 B to 2 MiB: the mean of 40 estimates is within 1.5% of the truth (the
    standard error of that mean is ~0.5%), and each estimate is within 5 sigma of sqrt(T/B)."""
    rng = random.Random(1234)
    sizes = [int(math.exp(rng.uniform(math.log(16), math.log(2 << 20)))) for _ in range(20000)]
    truth = sum(sizes)
    t = 262144
    ests = [_kernel_estimate(sizes, t, random.Random(seed)) for seed in range(40)]
    assert sum(ests) / len(ests) == pytest.approx(truth, rel=0.015)
    sigma = sampling.relative_error(truth, t)
    assert all(abs(e - truth) / truth < 5 * sigma for e in ests)


# ---- results, pprof, diff ----------------------------------------------------------------------
def _result() -> ProfileResult:
    sites = [Site(("leaky_cache_insert (app)", "main (app)"), 4096000, 1000, 5000000, 1300, 12.5),
             Site(("churn_work (app)", "main (app)"), 0, 0, 90000000, 40000, None),
             Site(("_ZN3foo3barEv (libx.so)",), 12345, 3, 12345, 3, 1.0)]
    return ProfileResult(pid=42, duration_s=30.0, mode="sampled", sampling_interval_bytes=524288,
                         sites=sort_sites(sites), lost={"events": 1, "map_full": 0, "unmatched_frees": 0},
                         allocator="/usr/lib/x86_64-linux-gnu/libc.so.6", start_time=1.7e9)


def test_sites_sorted_by_outstanding_bytes_and_json_contract_keys():
    r = _result()
    js = r.to_json()
    assert list(js)[:7] == ["pid", "duration_s", "mode", "sampling_interval_bytes", "via", "sites", "lost"]
    assert [s["outstanding_bytes"] for s in js["sites"]] == [4096000, 12345, 0]
    assert ProfileResult.from_json(json.loads(json.dumps(js))).sites == r.sites


def test_pprof_round_trip_keeps_every_value(tmp_path):
    r = _result()
    path = write_pprof(r, tmp_path / "p.pb.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_pprof(path)
    assert [(s.frames, s.outstanding_bytes, s.outstanding_allocations, s.allocated_bytes,
             s.allocated_allocations) for s in back.sites] == \
           [(s.frames, s.outstanding_bytes, s.outstanding_allocations, s.allocated_bytes,
             s.allocated_allocations) for s in r.sites]
    assert back.sampling_interval_bytes == 524288


def test_diff_reports_growth_per_stack_from_json_and_pprof(tmp_path):
    a = _result()
    grown = [Site(s.frames, s.outstanding_bytes * 3, s.outstanding_allocations * 3, s.allocated_bytes,
                  s.allocated_allocations, None) if s.frames[0].startswith("leaky") else s for s in a.sites]
    b = ProfileResult(**{**{f: getattr(a, f) for f in a.__dataclass_fields__}, "sites": sort_sites(grown)})
    (tmp_path / "a.json").write_text(json.dumps(a.to_json()))
    write_pprof(b, tmp_path / "b.pb.gz")
    da, db = load_profile(tmp_path / "a.json"), load_profile(tmp_path / "b.pb.gz")
    deltas = diff_profiles(da, db)
    assert deltas[0].frames[0] == "leaky_cache_insert (app)"
    assert deltas[0].delta_outstanding_bytes == 2 * 4096000
    assert all(d.delta_outstanding_bytes == 0 for d in deltas[1:])
    neg = delta_result(db, da, diff_profiles(db, da))
    write_pprof(neg, tmp_path / "neg.pb.gz")  # negative values encode and decode
    assert min(s.outstanding_bytes for s in read_pprof(tmp_path / "neg.pb.gz").sites) == -2 * 4096000


def test_load_profile_rejects_junk_with_a_clear_error(tmp_path):
    for name, data in (("x.json", b"{not json"), ("y.json", b'{"a": 1}'), ("z.pb.gz", b"\x08\x96"),
                       ("w.pb.gz", gzip.compress(b"\xff\xff\xff"))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError):
            load_profile(tmp_path / name)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_read_pprof_never_crashes_on_garbage(tmp_path, data):
    p = tmp_path / "g.pb"
    p.write_bytes(data)
    with contextlib.suppress(ValueError):
        read_pprof(p)


@settings(max_examples=100)
@given(st.integers(min_value=0, max_value=len(encode_profile(_result())) - 1))
def test_read_pprof_on_truncated_profile_raises_value_error_only(tmp_path_factory, cut):
    p = tmp_path_factory.mktemp("t") / "t.pb"
    p.write_bytes(encode_profile(_result())[:cut])
    with contextlib.suppress(ValueError):
        read_pprof(p)


# ---- ELF, symbols, perf map, demangling ---------------------------------------------------------
@settings(max_examples=100)
@given(st.binary(max_size=400))
def test_elf_loader_degrades_on_hostile_bytes(data):
    img = load_image(io.BytesIO(b"\x7fELF" + data))
    assert isinstance(img.problems, tuple)


def test_elf_image_of_libc_has_exports_and_build_id():
    with open(LIBC, "rb") as f:
        img = load_image(f)
    assert len(img.build_id) == 40 and not img.is_static
    assert {"malloc", "free", "mmap"} <= set(img.exports)
    assert img.symbol_at(img.exports["malloc"] + 1) in ("malloc", "__libc_malloc")



def _libc_debug_file() -> Path:
    with open(LIBC, "rb") as f:
        bid = load_image(f, None).build_id
    return Path(DEBUG_BUILD_ID_DIR) / bid[:2] / f"{bid[2:]}.debug"


def _debug_functions(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: int(s["st_value"]) for s in symtab.iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_value"]}


def test_symbolizer_names_libc_internal_memset_through_the_debug_file():
    """Debian's libc.so.6 has .dynsym only; its memset variants are named by libc6-dbg's file, found
    by build id, whose symbols are the stripped file's virtual addresses."""
    needs_root()
    debug = _libc_debug_file()
    if not debug.is_file():
        pytest.skip(f"no separate debug file for libc ({debug}): install libc6-dbg")
    with open(LIBC, "rb") as f:
        assert ELFFile(f).get_section_by_name(".symtab") is None  # otherwise the test proves nothing
    variant = "__memset_avx2_unaligned_erms"
    vaddr = _debug_functions(debug).get(variant)
    if vaddr is None:
        pytest.skip(f"this libc has no {variant}")
    with open(LIBC, "rb") as f:
        assert load_image(f, None).symbol_at(vaddr + 4) is None  # .dynsym alone does not name it
    with open(LIBC, "rb") as f:
        img = load_image(f)
    assert img.symbol_at(vaddr + 4) == variant and img.problems == ()
    assert img.functions.get(variant) is None  # never a place for probes
    # the same through a live process's mapping (here: this test's own libc)
    maps = [ln.split() for ln in Path("/proc/self/maps").read_text().splitlines()]
    base = min(int(m[0].split("-")[0], 16) for m in maps
               if len(m) >= 6 and m[5].endswith("/libc.so.6") and int(m[2], 16) == 0)
    sym = Symbolizer(os.getpid())
    try:
        assert sym.frames([base + vaddr + 4]) == [f"{variant} (libc.so.6)"]
        assert sym.frames([base + vaddr + 4], first_is_return=True) == [f"{variant} (libc.so.6)"]
    finally:
        sym.close()


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "other-build-id", "directory", "empty"])
def test_missing_or_broken_debug_file_degrades_to_dynsym_names(tmp_path, kind):
    with open(LIBC, "rb") as f:
        plain = load_image(f, None)
    bid = plain.build_id
    target = tmp_path / bid[:2] / f"{bid[2:]}.debug"
    target.parent.mkdir()
    real = _libc_debug_file()
    if kind == "garbage":
        target.write_bytes(b"\x7fELF" + bytes(random.Random(1).randrange(256) for _ in range(5000)))
    elif kind == "truncated":
        target.write_bytes((real if real.is_file() else LIBC).read_bytes()[:70000])
    elif kind == "other-build-id":
        target.write_bytes(Path("/bin/true").resolve().read_bytes())
    elif kind == "directory":
        target.mkdir()
    elif kind == "empty":
        target.write_bytes(b"")
    with open(LIBC, "rb") as f:
        img = load_image(f, str(tmp_path))
    assert (img.starts, img.names, img.functions, img.exports) == (
        plain.starts, plain.names, plain.functions, plain.exports)
    assert img.symbol_at(img.exports["malloc"]) is not None
    assert bool(img.problems) == (kind not in ("missing",))
    if real.is_file():
        internal = _debug_functions(real)["__memset_avx2_unaligned_erms"]
        assert img.symbol_at(internal + 4) is None  # left to the symbolizer's "0x<offset> (libc.so.6)"


def test_elf_image_cache_is_bounded_and_evicts_least_recently_used(monkeypatch):
    from collections import OrderedDict

    from nativewatch.malloc_profile import elfimage

    monkeypatch.setattr(elfimage, "_by_identity", OrderedDict())
    monkeypatch.setattr(elfimage, "_by_build_id", OrderedDict())
    monkeypatch.setattr(elfimage, "_MAX_CACHED_FILES", 2)

    def image(path: str) -> object:
        fd = os.open(path, os.O_RDONLY)
        try:
            return elfimage.image_for_fd(fd)
        finally:
            os.close(fd)

    libc = image(str(LIBC))
    image("/bin/true")
    assert image(str(LIBC)) is libc  # a hit, and now the most recently used
    image("/bin/cat")  # evicts /bin/true, not libc
    assert len(elfimage._by_identity) == 2 and image(str(LIBC)) is libc
    assert set(elfimage._by_build_id) == {i.build_id for i in elfimage._by_identity.values()}
    monkeypatch.setattr(elfimage, "_MAX_CACHED_SYMBOLS", 1)
    image("/bin/true")
    assert list(elfimage._by_identity.values())[-1].build_id != libc.build_id
    assert len(elfimage._by_identity) == 1 and len(elfimage._by_build_id) <= 1

def test_symbolizer_names_functions_and_trims_allocator_frames():
    needs_root()
    exe = build_c("leaky_sites.c", cflags=["-O0", "-fno-omit-frame-pointer"])
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        with open(exe, "rb") as f:
            img = load_image(f)
        maps = [ln.split() for ln in Path(f"/proc/{proc.pid}/maps").read_text().splitlines()]
        base = min(int(m[0].split("-")[0], 16) for m in maps if len(m) >= 6 and m[5] == str(exe))

        def rt(name: str) -> int:  # PIE: runtime = base + vaddr (first segment at vaddr 0)
            return base + img.functions[name]

        libc_x = [m for m in maps if len(m) >= 6 and m[5].endswith("libc.so.6") and "x" in m[1]][0]
        lo, hi = (int(x, 16) for x in libc_x[0].split("-"))
        sym = Symbolizer(proc.pid, allocator_ranges=[(lo, hi)])
        assert sym.frames([rt("leaky_cache_insert") + 4, rt("main") + 8]) == [
            f"leaky_cache_insert ({exe.name})", f"main ({exe.name})"]
        # caller inside the allocator (e.g. malloc called from libc itself) is trimmed; junk ends it
        frames = sym.site_frames(lo + 100, [lo + 50, rt("leaky_cache_insert") + 9, rt("main") + 9, 0x10])
        assert frames == [f"leaky_cache_insert ({exe.name})", f"main ({exe.name})"]
        sym.close()
    finally:
        proc.kill()
        proc.wait()


def test_demangle_cpp_names_in_one_batch():
    assert demangle(["_ZN3foo3barEv", "plain_c", "_Z1fi", "_Zgarbage!"]) == [
        "foo::bar()", "plain_c", "f(int)", "_Zgarbage!"]


def test_perf_map_parser():
    starts, entries = parse_perf_map(b"7f0000001000 40 LFoo;::bar\nbad line\n7f0000000000 10 [jit] x\n\n0 0 z\n")
    assert starts == [0x7F0000000000, 0x7F0000001000]
    assert entries == [(0x7F0000000010, "[jit] x"), (0x7F0000001040, "LFoo;::bar")]


@given(st.binary(max_size=500))
def test_perf_map_parser_never_crashes(data):
    starts, entries = parse_perf_map(data)
    assert len(starts) == len(entries)


def test_open_in_root_does_not_escape_through_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    secret = tmp_path / "host-secret"
    secret.write_text("host data")
    (root / "tmp" / "perf-1.map").symlink_to(secret)  # absolute: must resolve inside root
    (root / "tmp" / "perf-2.map").symlink_to("../../host-secret")  # '..' clamps at root
    (root / "tmp" / "perf-3.map").write_text("1000 10 f\n")
    for name in ("perf-1.map", "perf-2.map"):
        with pytest.raises(OSError):
            open_in_root(str(root), f"tmp/{name}", 1 << 20)
    assert open_in_root(str(root), "tmp/perf-3.map", 1 << 20) == b"1000 10 f\n"
    assert open_in_root(str(root), "tmp/perf-3.map", 4) == b"1000"


# ---- live-profile state file -------------------------------------------------------------------
def test_running_top_sites_only_while_the_writer_lives(tmp_path):
    sites = [s.to_json() for s in _result().sites]
    write_state(4242, sites, started=1.0, mode="sampled", interval_bytes=524288, directory=tmp_path)
    assert running_top_sites(4242, n=2, directory=tmp_path) == sites[:2]
    assert running_top_sites(4243, directory=tmp_path) is None
    # a writer that died (SIGKILL leaves the file behind) is not trusted
    child = subprocess.Popen(["sleep", "30"])
    doc = json.loads((tmp_path / "profile-4242.json").read_text())
    doc["writer_pid"] = child.pid
    child.kill()
    child.wait()
    (tmp_path / "profile-4242.json").write_text(json.dumps(doc))
    assert running_top_sites(4242, directory=tmp_path) is None
    (tmp_path / "profile-4242.json").write_text("{garbage")
    assert running_top_sites(4242, directory=tmp_path) is None


def test_cli_dump_bpf_prints_the_final_program(nativewatch_cli):
    r = nativewatch_cli("profile", "--pid", str(os.getpid()), "--mode", "exact", "--dump-bpf", check=True)
    assert "#define EXACT 1" in r.stdout and "#define K_MALLOC 1" in r.stdout
    # every rung's programs are in the one source: session/multi entry, the uretprobe, perf's per-kind
    for fn in ("int on_alloc(struct pt_regs *ctx)", "int on_alloc_ret(struct pt_regs *ctx)",
               "ALLOC_KIND_PROGRAM(10)", "FREE_KIND_PROGRAM(3)"):
        assert fn in r.stdout


def test_cli_profile_rejects_bad_arguments(nativewatch_cli):
    r = nativewatch_cli("profile", "--pid", str(os.getpid()), "--interval", "10", "--duration", "1s")
    assert r.returncode == 1 and "at least 256 bytes" in r.stderr
    r = nativewatch_cli("profile", "--pid", "0")
    assert r.returncode == 1 and "invalid pid" in r.stderr


JEMALLOC_LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


# --- probe placement by disassembly (placement.py) -------------------------------------------------
# Hand-assembled x86-64; each case says what it proves.
_MOV_RAX_RDI = b"\x48\x89\xf8"          # mov %rdi,%rax: reads the argument only
_SHR_RAX = b"\x48\xc1\xe8\x1a"          # shr $0x1a,%rax
_LOAD_RDX_RIP = b"\x48\x8b\x15\x00\x01\x00\x00"  # mov 0x100(%rip),%rdx: a load
_JNE_FWD = b"\x75\x02"                  # jne +2 (emulated by the kernel)
_RET = b"\xc3"
_NOPS = b"\x90\x90"


def _fn(*parts: bytes) -> bytes:
    return b"".join(parts)


@pytest.mark.skipif(not placement.available(), reason="capstone not installed")
def test_placement_runs_harmless_instructions_before_the_first_emulated_one():
    code = _fn(_MOV_RAX_RDI, _LOAD_RDX_RIP, _SHR_RAX, _JNE_FWD, _NOPS, _RET)
    p = placement.place(code, 0x1000, len(code), frozenset({"rdi"}))
    assert p is not None and p.offset == 14 and p.emulated and p.how.startswith("jne after 3")
    # rdx is an argument of posix_memalign: the load clobbers it, so nothing better is provable
    assert placement.place(code, 0x1000, len(code), frozenset({"rdi", "rdx"})) is None


@pytest.mark.skipif(not placement.available(), reason="capstone not installed")
def test_placement_refuses_a_prefix_some_branch_jumps_into():
    # a loop back to the second instruction: the probe at the jne would run twice in one call
    back = b"\xeb" + bytes([(3 - (14 + 2 + 2 + 2)) & 0xFF])  # jmp to offset 3, placed at offset 18
    code = _fn(_MOV_RAX_RDI, _LOAD_RDX_RIP, _SHR_RAX, _JNE_FWD, _NOPS, back, _RET)
    assert placement.place(code, 0x1000, len(code), frozenset({"rdi"})) is None
    # an indirect jump anywhere: a jump table could land in the prefix
    code = _fn(_MOV_RAX_RDI, _SHR_RAX, _JNE_FWD, _NOPS, b"\xff\xe0", _RET)  # jmp *%rax
    assert placement.place(code, 0x1000, len(code), frozenset({"rdi"})) is None


@pytest.mark.skipif(not placement.available(), reason="capstone not installed")
def test_placement_stops_at_stores_stack_changes_and_argument_writes():
    store = b"\x48\x89\x38"  # mov %rdi,(%rax): a memory write
    code = _fn(store, _JNE_FWD, _NOPS, _RET)
    assert placement.place(code, 0x1000, len(code), frozenset({"rdi"})) is None
    sub_rsp = b"\x48\x83\xec\x08"  # sub $8,%rsp: *(%rsp) would no longer be the return address
    code = _fn(sub_rsp, _JNE_FWD, _NOPS, _RET)
    assert placement.place(code, 0x1000, len(code), frozenset({"rdi"})) is None
    clobber = b"\x31\xff"  # xor %edi,%edi: the argument itself
    code = _fn(clobber, _JNE_FWD, _NOPS, _RET)
    assert placement.place(code, 0x1000, len(code), frozenset({"rdi"})) is None
    # unknown size (no symbol size): no sweep, so no proof
    code = _fn(_MOV_RAX_RDI, _JNE_FWD, _NOPS, _RET)
    assert placement.place(code, 0x1000, 0, frozenset({"rdi"})) is None


@pytest.mark.skipif(not placement.available(), reason="capstone not installed")
@given(st.binary(max_size=200), st.integers(0, 300))
def test_placement_never_crashes_and_stays_inside_the_function(code, size):
    p = placement.place(code, 0x400000, size)
    assert p is None or 0 <= p.offset < min(size, len(code))


@pytest.mark.skipif(not Path(JEMALLOC_LIB).exists() or not placement.available(), reason="needs jemalloc, capstone")
def test_jemallocs_free_is_probed_at_its_first_jcc_not_single_stepped_at_entry():
    with open(JEMALLOC_LIB, "rb") as f:
        img = load_image(f, None)
        vaddr, size = img.exports["free"], img.sizes["free"]
        f.seek(img.file_offset(vaddr))
        code = f.read(size)
    p = placement.place(code, vaddr, size, placement.ARG_REGS["free"])
    assert p is not None and p.offset > 0 and p.emulated, p
    import capstone

    first = next(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(code[p.offset:], 0))
    assert first.mnemonic.startswith("j")  # a jcc the kernel emulates
