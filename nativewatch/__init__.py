"""nativewatch: what a Linux process's or container's RSS is made of, what grows, which code holds it."""

__version__ = "0.1.0"
__all__ = ["__version__"]
