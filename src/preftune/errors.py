"""Errors a user can act on; the command line prints them without a traceback."""


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key or method, wrong type, conflicting values."""
