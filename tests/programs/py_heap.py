"""Holds what the test asks for and reports pymalloc's own figures. One command a line on stdin, one
JSON line on stdout per command: "objects MIB" (retained small objects, in pymalloc arenas),
"bytearray MIB" (a retained, touched bytearray: malloc'd outside the arenas), "leak-objects MIB_PER_S",
"leak-malloc MIB_PER_S" (C-level malloc through ctypes, never freed), "stats".
Runs on every CPython from 3.6: no f-string features beyond 3.6, no walrus."""
import ctypes
import json
import os
import re
import sys
import tempfile
import threading
import time

keep = []
malloced = [0]


def objects(mib):
    # a tuple, a str and an int per entry: ~150 bytes, all from pymalloc
    n = int(mib * (1 << 20) / 150)
    keep.append([(i, f"k{i}", [i]) for i in range(n)])


def big(mib):
    b = bytearray(int(mib) << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    keep.append(b)


libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


def cmalloc(mib):
    n = int(mib * (1 << 20))
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    keep.append(p)
    malloced[0] += n


def arena_stats():
    # sys._debugmallocstats writes to the C-level stderr: catch it through a temporary file
    fd = sys.stderr.fileno()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, fd)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("ascii", "replace")
    m = re.search(r"(\d+) arenas \* (\d+) bytes/arena\s+=\s+([\d,]+)", text)
    if not m:
        return {"arenas": 0, "arena_size": 0, "arena_bytes": 0}
    return {"arenas": int(m.group(1)), "arena_size": int(m.group(2)),
            "arena_bytes": int(m.group(3).replace(",", ""))}


def stats():
    d = arena_stats()
    d.update({"pid": os.getpid(), "version": "{}.{}.{}".format(*sys.version_info[:3]),
              "malloced": malloced[0]})
    return d


def every(period, fn):
    def loop():
        while True:
            time.sleep(period)
            fn()
    threading.Thread(target=loop, daemon=True).start()


def main():
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        cmd, x = parts[0], float(parts[1]) if len(parts) > 1 else 0.0
        if cmd == "objects":
            objects(x)
        elif cmd == "bytearray":
            big(x)
        elif cmd == "leak-objects":
            every(0.1, lambda x=x: objects(x / 10))
        elif cmd == "leak-malloc":
            every(0.1, lambda x=x: cmalloc(x / 10))
        elif cmd != "stats":
            print(json.dumps({"error": "unknown command " + cmd}), flush=True)
            continue
        print(json.dumps(stats()), flush=True)


main()
