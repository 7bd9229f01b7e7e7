"""The error classes a user can cause, and how the command-line entry points report them.

Every error that bad input can cause (a recipe, a config, a checkpoint, an image, a question, annotations, a base
model file, a prediction file) is a :class:`UserError`; the entry points (``gsva``, ``gsva train``, ``gsva eval``,
the app) report it, and ``OSError`` (a missing or unreadable file), as one ``error: ...`` line on stderr and exit
with status 2 (:func:`report_user_errors`). Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["UserError", "InputError", "USER_ERRORS", "report_user_errors"]


class UserError(Exception):
    """Base class of the errors caused by the user's input (not by a bug)."""


class InputError(UserError, ValueError):
    """A value given by the user (an option, a size, a name) is out of range or unknown."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


def report_user_errors(main: Callable[[], int]) -> int:
    """Run ``main()``; a :data:`USER_ERRORS` exception becomes one ``error:`` line on stderr and exit status 2."""
    try:
        return main()
    except USER_ERRORS as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
