"""The node agent: a scan loop over every process and container, growth and leak verdicts, OOM
post-mortems, and a Prometheus exporter. `nativewatch agent` is the entry point (nativewatch/cmd_agent.py).
"""
