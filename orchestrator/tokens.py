"""Runner tokens: random, shown once to the machine, stored only as a SHA-256 hash."""
from __future__ import annotations

import hashlib
import hmac
import secrets


def mint() -> tuple[str, bytes]:
    """A new token and the hash to store."""
    token = secrets.token_urlsafe(32)
    return token, digest(token)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def matches(token: str, stored: bytes | None) -> bool:
    return stored is not None and hmac.compare_digest(digest(token), stored)
