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


#: The most characters of a user's value echoed in one error message.
ECHO_LIMIT = 200


def short_repr(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, without ever building the whole repr.

    Error messages echo the user's values; a YAML alias bomb expands to a value whose full repr
    would not fit in memory, so containers are shown only a few levels and items deep
    (:mod:`reprlib`) and the result is then cut, marked with ``...``.
    """
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel = 3
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 8
    shortener.maxstring = shortener.maxother = shortener.maxlong = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
