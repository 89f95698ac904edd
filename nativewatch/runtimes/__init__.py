"""Runtimes behind one interface (base.py), tried in the order of the registry (registry.py).

Nothing is imported here, so a runtime package can import the interface without pulling in the
registry that imports it.
"""
