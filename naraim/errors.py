"""The error a user can cause: bad config, missing data, incompatible checkpoint."""


class UserError(Exception):
    """A problem the user can fix; its message is one line naming the problem and the fix. The program ends
    with exit_code."""

    exit_code = 1
