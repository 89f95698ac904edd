"""Node.js: detected from its executable or libnode, heap placed from V8's own page headers."""
