"""POSIX access: `fluidcache mount` serves a dataset as a directory (libfuse 3)."""
