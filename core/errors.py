"""The one error type for problems the user can fix.

Libraries raise `UserError` (or a subclass) when the input, data or setup is wrong and the
message says how to fix it; commands (launch/cli.py) print it as "isic-X: error: ..." and
exit 1 without a traceback. Every other exception is a bug and keeps its traceback.
Subclasses may also derive from a built-in type (ValueError, FileNotFoundError) so that
library callers can catch them by kind.
"""


class UserError(Exception):
    """A problem with the user's input, data or setup that the message explains."""


class InputError(UserError, ValueError):
    """A value, file or model the user passed is unusable (the message says why and how)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (the message says what to pass)."""
