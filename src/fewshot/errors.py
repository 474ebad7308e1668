"""The exception types users see: bad input, and a run stopped by a signal."""

import signal


class FewShotError(ValueError):
    """Bad input or configuration, with a message that names the problem."""


class Interrupted(KeyboardInterrupt):
    """A stop asked for by SIGINT (Ctrl-C) or SIGTERM; ``message`` says what was kept. The command line exits with
    128 + the signal number (130, 143)."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.message = message
