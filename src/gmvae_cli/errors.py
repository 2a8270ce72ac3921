"""The one exception the CLI turns into a one-line message and exit status 2."""


class UserError(ValueError):
    """Bad input or usage: the message names the problem and what to do about it."""
