"""The one exception type the user sees: bad input, reported as a single line with exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message names the bad value and what would be accepted."""


class Interrupted(Exception):
    """A generation stopped between two sampling steps because its interrupt flag was set."""
