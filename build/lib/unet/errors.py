"""User-facing errors.

Anything a user can fix (a config typo, a missing data folder, a corrupt file) is raised as a
:class:`UserError` subclass. The command-line entry points catch them and print one line,
``error: <message>``, then exit with status 2 and no traceback.
"""


class UserError(Exception):
    """A problem in the user's input, reported as one line and exit status 2."""


class ConfigError(UserError):
    """A config file or command-line override is invalid."""


class DataError(UserError):
    """A dataset folder or file is missing, empty, inconsistent or unreadable."""


class MissingDataError(DataError):
    """The dataset folder is missing or empty; the trainer adds the command that prepares it."""
