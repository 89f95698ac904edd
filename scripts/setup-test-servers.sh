#!/usr/bin/env bash
# Real servers from Debian's archive for the tests that profile software nobody here wrote
# (tests/test_profile_servers.py): Debian's redis-server, built -O2 without frame pointers, with
# jemalloc and its own allocation wrapper (zmalloc). The tests start their own instance on a free
# port; the package's service is kept from starting (policy-rc.d) so nothing listens on 6379.
# Idempotent.
set -euo pipefail
log() { printf '[setup] %s\n' "$*" >&2; }
if [ -x /usr/bin/redis-server ]; then
    exit 0
fi
log "installing redis-server (service not started)"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap 'if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
