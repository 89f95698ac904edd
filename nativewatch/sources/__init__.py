"""Everything that reads the kernel, one module per source (node_exporter's one collector per file).

procfs (smaps, maps, status, cmdline, ...), procstat (/proc/PID/stat, the agent's cheap pass), the
cgroup modules (identity and memory), and the eBPF sources (page_faults, oom) loaded by `bpf`, the
one loader of the programs in bpf/. A source turns raw kernel text into typed facts and knows nothing
about Prometheus, the CLI or the TUI.
"""
