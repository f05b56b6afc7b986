"""The one exception type a user sees.

A `UserError` is bad input or a bad setting: the CLI prints its message on one line and exits with code 2.
Messages name the file, the line, column or flag, and the fix. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or configuration, explained in one line that says how to fix it."""

    exit_code = 2
