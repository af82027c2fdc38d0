"""User-facing errors: one line naming the problem and the fix, printed by the CLI without a traceback."""

import sys
from collections.abc import Callable


class HarnessError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The message must be one line that names the problem and says what to do about it.
    """


def run_command(command: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """A command-line entry point's exit code: the command's own (0 when it returns None), 2 after printing a
    HarnessError as one `error:` line, 130 after printing `error: <interrupted>` on Ctrl-C; never a traceback."""
    try:
        return command() or 0
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
