"""The base of every error Solstice raises for a user to act on."""


class SolsticeError(Exception):
    """An error whose message tells the user what went wrong and what to do next.

    Raised anywhere, caught at the edge (CLI, RPC handler, consumer) and shown as is.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(SolsticeError):
    """Configuration is missing or malformed."""
