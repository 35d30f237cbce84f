"""What the Admin service and `ciadm` agree on: the default address of the Admin listener, the
token's environment variables, how a token file is read and how the token travels.

The Admin listener is separate from the Runner one: job machines are given the Runner port
only, so administration is never reachable from inside a job (see docs/SECURITY.md).
"""
from __future__ import annotations

from pathlib import Path

from common.errors import ConfigError

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:50552"
# `ciadm`'s variables (the orchestrator's own are SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN[_FILE]).
TOKEN_ENV = "SOLSTICE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "SOLSTICE_ADMIN_TOKEN_FILE"
# Shorter tokens are refused: the token is the only thing between the network and approvals.
MIN_TOKEN_LENGTH = 16
GENERATE_HINT = "create one with: umask 077; openssl rand -hex 32 > /etc/solstice/admin-token"


def read_token_file(path: str | Path) -> str:
    """The token in `path` (surrounding white space dropped); a clear error if unusable."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the admin token file {path}: {exc.strerror or exc}",
                          hint="check the path and that this user may read it") from exc
    if not token:
        raise ConfigError(f"the admin token file {path} is empty", hint=GENERATE_HINT)
    return token


def check_token(token: str, source: str) -> str:
    """`token` if long enough to be a secret, else a ConfigError naming `source`."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the admin token from {source} is too short ({len(token)} characters;"
                          f" at least {MIN_TOKEN_LENGTH})", hint=GENERATE_HINT)
    return token


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The gRPC call metadata that carries `token`."""
    return (("authorization", f"Bearer {token}"),)
