"""Errors a user can act on; the command line prints them without a traceback."""


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key or method, wrong type, conflicting values."""


class TrainingStopped(RuntimeError):
    """The run ended before its last step, on purpose and with its state saved: a stop
    signal (SIGTERM, SIGINT) or too many non-finite steps in a row. ``exit_code`` is what
    the command line returns; ``checkpoint`` the folder ``--resume`` continues from."""

    def __init__(self, message: str, exit_code: int, checkpoint=None):
        super().__init__(message)
        self.exit_code, self.checkpoint = exit_code, checkpoint


class CheckpointWriteFailed(TrainingStopped):
    """A checkpoint could not be written (full disk, file-size limit, I/O error) on some
    process. Its staging folder is removed and earlier checkpoints are untouched;
    ``checkpoint`` is the newest intact one (None when there is none yet)."""
