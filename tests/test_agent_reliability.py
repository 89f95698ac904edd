"""The real agent under node conditions (issue 16): process churn, scale, hostile scrapers and faults,
observed from outside as an operator would (its /proc entry, /healthz, /metrics).

Tolerances:
- descriptors within 10 of the baseline once the churn stops: the agent's steady set is ~20 (BPF
  maps/programs/links, the listening socket, the history database and its WAL); a per-process leak
  (the bug this pins: three ELF files held per ~10 exited processes) is hundreds over 2,500 processes.
- RSS within 16 MiB: the issue's bound. The state of vanished processes is kept for dead_grace_s
  (a late OOM event still finds its victim's breakdown) but at most dead_max (256) of them, and at
  most 512 symbolizers; malloc arenas do not shrink back either, so the bound is on growth, not
  equality.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from agentproc import AgentProcess
from conftest import build_c

MIB = 1 << 20

# ~110 processes a second for 30 s: bursts of short sleeps, exec chains (sh -> exec env -> exec sleep:
# one pid, three executables) and `date` (a fork per loop). Prints how many processes it started.
CHURN = r"""
end=$(( $(date +%s) + 30 )); n=0
while [ "$(date +%s)" -lt "$end" ]; do
  for i in 1 2 3 4 5 6 7 8; do sleep 0.8 & done
  sh -c 'exec env sleep 0.6' &
  n=$((n + 12))
  sleep 0.1
done
wait
echo "$n"
"""


@pytest.mark.slow
@pytest.mark.bpf
def test_churn_of_2500_processes_leaves_descriptors_and_rss_at_baseline(bpf_available, tmp_path):
    threads_prog = build_c("thread_churn.c", cflags=["-O1", "-pthread"])
    # Every BPF program on; faults sampled densely (1 in 4) so that nearly every short-lived process
    # gets a symbolizer, which is what leaked descriptors before.
    with AgentProcess(tmp_path, interval_s=1.0, full_interval_s=5.0, scan_budget_s=2.0,
                      page_fault_sample_every=4, auto_capture=False) as agent:
        agent.wait_ready(scans=5)
        time.sleep(3)
        fds0, rss0, threads0 = agent.fds(), agent.rss(), agent.threads()
        tc = subprocess.Popen([str(threads_prog), "200"], stdout=subprocess.PIPE, text=True)
        try:
            t0 = time.monotonic()
            out = subprocess.run(["/bin/sh", "-c", CHURN], capture_output=True, text=True, timeout=120,
                                 check=True).stdout
            churn_s = time.monotonic() - t0
        finally:
            tc.kill()
            tc.wait()
        started = int(out.strip().splitlines()[-1])
        peak_fds = agent.fds()
        time.sleep(15)
        agent.wait_scans(2)
        fds1, rss1, threads1 = agent.fds(), agent.rss(), agent.threads()
        h = agent.health()
        sizes = {k: agent.metric("nativewatch_agent_cache_entries", cache=k) for k in
                 ("symbolizers", "symbolizer_open_files", "dead_processes", "elf_files")}
        vanished = agent.metric("nativewatch_agent_vanished_processes_total")
        print(f"{started} processes in {churn_s:.1f} s; fds {fds0} -> peak {peak_fds} -> {fds1}; "
              f"rss {rss0 / MIB:.1f} -> {rss1 / MIB:.1f} MiB; threads {threads0} -> {threads1}; "
              f"caches {sizes}; vanished {vanished}; errors {h['errors_by_source']}")
        assert started >= 2500
        assert h["status"] == "ok", h
        assert fds1 <= fds0 + 10, agent.fd_targets()
        assert rss1 - rss0 <= 16 * MIB
        assert threads1 <= threads0 + 2  # HTTP handler threads come and go; nothing else may stay
        assert sizes["symbolizer_open_files"] == 0
        # The vanished-pid races happened, and were counted as such, not as errors.
        assert vanished and vanished > 0
        # Errors left are for processes that are still alive and refuse access (on this machine pid 1
        # is a sandbox's init whose smaps even root may not read), never for a churned pid.
        assert not {"stat", "attribution"} & set(h["errors_by_source"]), h["recent_errors"]
        assert all(os.path.exists(f"/proc/{e['pid']}") for e in h["recent_errors"]), h["recent_errors"]
