"""Errors a user can cause.

Every part raises :class:`UserError` (or a subclass) for problems the user can
fix: a bad definition file, a missing image, an existing output.  The CLI prints
its one-line message and exits non-zero, never with a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is one line naming the culprit."""

    exit_code = 1
