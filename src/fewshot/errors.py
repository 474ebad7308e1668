"""The one exception type users see for bad input."""


class FewShotError(ValueError):
    """Bad input or configuration, with a message that names the problem."""
