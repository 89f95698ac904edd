"""Go: detected from the executable's ELF, heap found from the runtime's 64 MiB arena layout."""
