"""The `preftune demo` task (see task.py)."""
