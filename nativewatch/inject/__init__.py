"""Putting the in-process allocation sampler into a running process (ptrace, GOT patching)."""
