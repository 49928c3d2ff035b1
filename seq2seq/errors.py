"""The one exception type for mistakes a user can fix (bad config, corpus or checkpoint)."""


class UserError(Exception):
    """A problem in the user's input: the CLI prints its message on one line and exits with status 2."""
