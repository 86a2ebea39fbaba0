"""Errors a user can cause. The CLI prints their one-line message and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input, answered with one line that names the problem and the fix.
    The line stays one line whatever it quotes (a file name or an argument with a newline in it)."""

    def __str__(self) -> str:
        return " ".join(part.strip() for part in super().__str__().splitlines() if part.strip())


class ConfigError(UserError):
    """An unknown, mistyped or out-of-range configuration value."""


class DataError(UserError):
    """Data that is missing, corrupt, of the wrong shape, or outside the likelihood's support."""


class RunError(UserError):
    """A run directory or checkpoint that cannot be used."""


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at an epoch boundary; the run directory holds the
    checkpoint of the last completed epoch and ``--resume`` continues it. Not a UserError (nothing
    was wrong with the input): the CLI prints its one line and exits with ``exit_code``, 128 + the
    signal number (130 for SIGINT, 143 for SIGTERM), as a shell does for a process a signal ended."""

    def __init__(self, message: str = "interrupted", signum: int = 2):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
