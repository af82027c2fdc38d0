"""User-facing errors: one line naming the problem and the fix, printed by the CLI without a traceback."""


class HarnessError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The message must be one line that names the problem and says what to do about it.
    """
