"""Errors a user can cause. The CLI prints their one-line message and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input, answered with one line that names the problem and the fix."""


class ConfigError(UserError):
    """An unknown, mistyped or out-of-range configuration value."""


class DataError(UserError):
    """Data that is missing, corrupt, of the wrong shape, or outside the likelihood's support."""


class RunError(UserError):
    """A run directory or checkpoint that cannot be used."""


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""
