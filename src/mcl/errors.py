"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (a path, a value, a file): the message names it and says how to fix it."""
