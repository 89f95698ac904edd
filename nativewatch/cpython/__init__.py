"""CPython: detected from its executable or libpython, heap = the pymalloc arenas its own table lists."""
