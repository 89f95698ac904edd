#!/bin/sh
# Build the in-process allocation sampler (nwsampler.c) into a self-contained shared object: no libc,
# no imports, no stack protector, frame pointers and unwind tables (stacks walk through its hooks).
# Used by scripts/setup.sh and scripts/image-steps.sh.  Usage: build-sampler.sh [OUT]
set -eu
here=$(dirname "$0")
out=${1:-$here/nwsampler.so}
tmp="$out.tmp.$$"
${CC:-gcc} -O2 -g -shared -fPIC -nostdlib -nostartfiles -ffreestanding -fno-builtin -fno-stack-protector \
    -fcf-protection=none -fno-omit-frame-pointer -fasynchronous-unwind-tables -fexceptions \
    -fvisibility=hidden -Wall -Wextra -Werror -Wl,-z,now -Wl,-z,noexecstack -Wl,--build-id \
    -o "$tmp" "$here/nwsampler.c"
mv -f "$tmp" "$out"
