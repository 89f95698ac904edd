"""The `nativewatch` command: a click group; each subcommand lives in its own `cmd_<name>` module."""

from __future__ import annotations

import importlib

import click

from nativewatch import __version__

# Each name is a module nativewatch.cmd_<name> exposing a click command called `command`.
COMMAND_MODULES: tuple[str, ...] = ("snapshot", "top", "doctor", "soak", "jcmd", "agent", "evidence", "profile", "diff")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="nativewatch")
def main() -> None:
    """What is this process's / container's RSS made of, what grows, and which code holds it."""


for _name in COMMAND_MODULES:
    main.add_command(importlib.import_module(f"nativewatch.cmd_{_name}").command)


if __name__ == "__main__":
    main()
