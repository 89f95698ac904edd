"""`nativewatch jcmd PID COMMAND...`: run a HotSpot diagnostic command without a JDK installed."""

from __future__ import annotations

import click

from nativewatch.clickutil import fail, pid_errors
from nativewatch.errors import AccessDenied, ProcessGone


@click.command("jcmd", context_settings={"ignore_unknown_options": True})
@click.argument("pid", type=int)
@click.argument("words", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds for the whole attach.")
@click.option("--protocol", type=click.Choice(["auto", "1", "2"]), default="auto", show_default=True,
              help="Attach protocol version (2 needs JDK 24+).")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
def command(pid: int, words: tuple[str, ...], timeout: float, protocol: str, proc_root: str) -> None:
    """Like the JDK's `jcmd PID COMMAND...`, e.g. `nativewatch jcmd 1234 VM.native_memory summary`.

    Only a verified HotSpot JVM with attach enabled is ever signalled.
    """
    from nativewatch.jvm import attach

    if pid <= 0:
        fail(f"invalid pid: {pid}")
    proto: str | int = protocol if protocol == "auto" else int(protocol)
    try:
        res = attach.execute(pid, "jcmd", [" ".join(words)], proc_root=proc_root, timeout_s=timeout,
                             protocol=proto)
    except (ProcessGone, AccessDenied) as exc:
        pid_errors(pid, exc)
    except attach.AttachError as exc:
        fail(str(exc))
    click.echo(f"{pid}:")
    click.echo(res.output, nl=not res.output.endswith("\n"))
    if res.code != 0:
        raise SystemExit(1)
