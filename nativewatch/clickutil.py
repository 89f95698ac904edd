"""Helpers shared by the click command modules."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from nativewatch.errors import AccessDenied, ProcessGone
from nativewatch.units import parse_bytes, parse_duration

__all__ = ["fail", "DURATION", "SIZE", "pid_errors"]


def fail(message: str, code: int = 1) -> NoReturn:
    """One-line error on stderr and a non-zero exit: the rule for every command."""
    click.echo(f"nativewatch: {message}", err=True)
    sys.exit(code)


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()
SIZE = _Size()


def pid_errors(pid: int, exc: BaseException) -> NoReturn:
    if isinstance(exc, ProcessGone):
        fail(f"no such process: {pid} (it does not exist or exited)")
    if isinstance(exc, AccessDenied):
        fail(f"{exc} — run as root or with CAP_SYS_PTRACE/CAP_DAC_READ_SEARCH")
    raise exc
