"""`nativewatch agent`: the long-running node agent (scan loop, exporter, OOM post-mortems)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click

from nativewatch.clickutil import DURATION, fail

__all__ = ["command"]


@click.command("agent")
@click.option("--listen", help="HOST:PORT for /metrics, /healthz, /api/v1/snapshot [127.0.0.1:9847].")
@click.option("--interval", "interval_s", type=DURATION, help="Scan interval (cheap sources) [10s].")
@click.option("--full-interval", "full_interval_s", type=DURATION,
              help="Full smaps attribution of a process at most this often [60s].")
@click.option("--window", "window_s", type=DURATION, help="Growth window [1h]; a leak verdict needs a quarter of it.")
@click.option("--evidence-dir", type=click.Path(path_type=Path), help="Where OOM/capture evidence goes.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="History store directory.")
@click.option("--track", type=int, multiple=True, help="Always export and fully scan this pid (repeatable).")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML file with any agent setting (command-line options win).")
@click.option("--no-bpf", is_flag=True, help="Run without eBPF (OOM kills from cgroup counters).")
@click.option("--dump-bpf", is_flag=True, hidden=True, help="Print the final BPF programs and exit.")
@click.option("-v", "--verbose", count=True)
def command(listen: str | None, interval_s: float | None, full_interval_s: float | None, window_s: float | None,
            evidence_dir: Path | None, state_dir: Path | None, track: tuple[int, ...],
            config_file: Path | None, no_bpf: bool, dump_bpf: bool, verbose: int) -> None:
    """Watch every process and container: breakdowns, growth and leak verdicts, OOM post-mortems,
    Prometheus metrics. Stops cleanly on SIGTERM/SIGINT."""
    from nativewatch.agent.config import ConfigError, load_config

    logging.basicConfig(level=logging.WARNING - 10 * verbose, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_file, listen=listen, interval_s=interval_s, full_interval_s=full_interval_s,
                          window_s=window_s, evidence_dir=evidence_dir, state_dir=state_dir, track=track,
                          bpf=False if no_bpf else None)
    except ConfigError as exc:
        fail(str(exc), 2)
    if dump_bpf:
        from nativewatch.sources.bpf import program_text

        click.echo(program_text("oom_kill.c", {"RINGBUF_PAGES": 8}))
        click.echo(program_text("page_faults.c", {"SAMPLE_EVERY": cfg.page_fault_sample_every}))
        return

    from nativewatch.agent.exporter import make_registry
    from nativewatch.agent.http import serve
    from nativewatch.agent.loop import Agent

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = Agent(cfg)
    try:
        try:
            server, _thread = serve(cfg, make_registry(lambda: agent.view, top_sites=cfg.top_sites),
                                    lambda: agent.view)
        except OSError as exc:
            fail(f"cannot listen on {cfg.listen}: {exc}")
        for src, why in sorted(agent.degraded.items()):
            logging.getLogger("nativewatch.agent").warning("degraded: %s: %s", src, why)
        click.echo(f"nativewatch agent listening on {cfg.listen} (interval {cfg.interval_s:g}s)", err=True)
        try:
            agent.run(stop)
        finally:
            server.shutdown()
            server.server_close()
    finally:
        agent.close()
