"""Runner tokens: random, shown once to the machine, stored only as a SHA-256 hash."""
from __future__ import annotations

import hashlib
import hmac
import secrets


def random_token() -> str:
    """256 random bits, URL-safe, never starting with `-`: a token is given on command lines
    (`ciadm --token TOKEN`), where argparse would take one that does for an option."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def mint() -> tuple[str, bytes]:
    """A new token and the hash to store."""
    token = random_token()
    return token, digest(token)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def matches(token: str, stored: bytes | None) -> bool:
    return stored is not None and hmac.compare_digest(digest(token), stored)
