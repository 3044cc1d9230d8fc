"""The error type for a user's mistake: the bottom of the import graph, so any layer raises it."""


class UserError(Exception):
    """A mistake in the user's input: printed as one sentence, exit status 2, no traceback."""
