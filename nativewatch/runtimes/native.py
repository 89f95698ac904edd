"""The fallback: a process no runtime claims keeps the runtime-neutral view unchanged."""

from __future__ import annotations

from nativewatch.runtimes.base import ProcessInfo, Runtime

__all__ = ["NATIVE", "NativeRuntime"]


class NativeRuntime(Runtime):
    name = "native"

    def detect(self, info: ProcessInfo) -> bool:
        return True


NATIVE = NativeRuntime()
