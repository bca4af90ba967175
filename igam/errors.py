"""Exceptions with one-line, user-facing messages.

Every error a user can cause by bad input (missing dataset, malformed file, unknown config
key, wrong checkpoint, invalid adversarial examples) is raised as one of these, with a message
that names the offending file or key and says what was expected. Entry scripts catch
``IGAMError`` and print ``error: <message>`` instead of a traceback.
"""


class IGAMError(Exception):
    """Base class of all user-facing errors of igam."""


class DataError(IGAMError):
    """A dataset file or folder is missing or malformed."""


class ConfigError(IGAMError):
    """A config file or command-line override is invalid."""


class CheckpointError(IGAMError):
    """A checkpoint is missing, corrupt, or does not fit the model asked for."""


class AttackFileError(IGAMError):
    """An adversarial-example file has the wrong shape, pixel range or perturbation size."""


class MissingDependencyError(IGAMError):
    """An optional package needed for what was asked (e.g. pyautoattack) is not installed."""
