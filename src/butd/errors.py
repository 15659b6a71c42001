"""The one exception type for user mistakes (click-free, so every stage can raise it).

The CLI renders it as the single line ``Error: <what> (<where>): <what to do>`` and exits with 2 for
usage mistakes (a bad option, a file of the wrong kind) and 1 for failures (the input is broken).
"""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "UserError"]

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UserError(ValueError):
    """A mistake the user can fix: what went wrong, where (a file or value), and what to do.

    A ``ValueError``, so library callers that catch bad values keep working.
    """

    def __init__(self, what: str, where: str | object = "", todo: str = "", *, usage: bool = False) -> None:
        self.what, self.where, self.todo, self.usage = what, str(where), todo, usage
        super().__init__(self.line())

    @property
    def exit_code(self) -> int:
        return EXIT_USAGE if self.usage else EXIT_FAILURE

    def line(self) -> str:
        """``<what> (<where>): <what to do>`` with the empty parts left out."""
        text = self.what + (f" ({self.where})" if self.where else "")
        return text + (f": {self.todo}" if self.todo else "")
