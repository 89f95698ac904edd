"""The `nativewatch` command: a click group; each subcommand lives in its own `cmd_<name>` module."""

from __future__ import annotations

import importlib

import click

from nativewatch import __version__

# Each name is a module nativewatch.cmd_<name> exposing a click command called `command`.
COMMAND_MODULES: tuple[str, ...] = ("snapshot", "top", "doctor", "soak", "jcmd", "agent", "evidence", "profile", "diff",
                                    "explain")


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or help lists them all), so
    `nativewatch jcmd` or `snapshot` does not pay for the TUI, bcc or the exporter."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_MODULES:
            return None
        return importlib.import_module(f"nativewatch.cmd_{cmd_name}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="nativewatch")
def main() -> None:
    """What is this process's / container's RSS made of, what grows, and which code holds it."""


if __name__ == "__main__":
    main()
