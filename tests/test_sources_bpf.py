"""The one BPF loader (nativewatch.sources.bpf): where programs are found and what --dump-bpf prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nativewatch.errors import SourceUnavailable
from nativewatch.malloc_profile import probes
from nativewatch.sources import bpf

ROOT = Path(__file__).resolve().parent.parent


def test_default_dir_is_the_checkouts_bpf(monkeypatch):
    monkeypatch.delenv("NATIVEWATCH_BPF_DIR", raising=False)
    assert bpf.bpf_dir() == ROOT / "bpf"
    assert bpf.program_path("oom_kill.c").is_file()


def test_every_program_is_found_through_NATIVEWATCH_BPF_DIR(monkeypatch, tmp_path):
    (tmp_path / "x.h").write_text("#define FROM_HEADER 7\n")
    (tmp_path / "oom_kill.c").write_text('#include <linux/sched.h>\n#include "x.h"\nint relocated;\n')
    (tmp_path / "malloc_sites.c").write_text('#include "x.h"\nint malloc_relocated;\n')
    monkeypatch.setenv("NATIVEWATCH_BPF_DIR", str(tmp_path))
    assert bpf.cflags({"A": 1})[0] == f"-I{tmp_path}"
    text = bpf.program_text("oom_kill.c", {"RINGBUF_PAGES": 8})
    # local headers are inlined, system headers left to bcc
    assert text.startswith("#define RINGBUF_PAGES 8\n") and "#include <linux/sched.h>" in text
    assert "#define FROM_HEADER 7" in text and "int relocated;" in text
    # the malloc profiler reads the same directory through the same loader
    dump = probes.dump_source(probes.build_defines(mode="exact", interval_bytes=4096))
    assert "#define EXACT 1" in dump and "int malloc_relocated;" in dump


@pytest.mark.skipif(os.geteuid() != 0, reason="the loader refuses before looking when not root")
def test_a_missing_program_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv("NATIVEWATCH_BPF_DIR", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="missing"):
        bpf.load_bpf("page_faults.c", {})


def test_nest_range_defines_are_64_bit_constants():
    d = probes.build_defines(mode="sampled", interval_bytes=1 << 19, nest_range=(0x1000, 0x2000))
    assert d["NEST_LO"] == "0x1000ULL" and d["NEST_HI"] == "0x2000ULL"
    assert "-DNEST_LO=0x1000ULL" in bpf.cflags(d)
