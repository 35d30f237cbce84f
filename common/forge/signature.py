"""Webhook signatures: HMAC-SHA256 of the raw request body, compared in constant time.

Forgejo and Gitea send the bare lowercase hex digest (`X-Forgejo-Signature`,
`X-Gitea-Signature`); GitHub prefixes it with `sha256=` (`X-Hub-Signature-256`). Always verify
the bytes as received, before any JSON parsing: re-serialising changes them.
"""
from __future__ import annotations

import hashlib
import hmac

GITHUB_PREFIX = "sha256="


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes, *, prefix: str = "") -> str:
    """The signature a forge would send for `body`: `prefix` + hex HMAC-SHA256."""
    return prefix + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, signature: str | None, *, prefix: str = "") -> bool:
    """Whether `signature` (a header value, None when absent) signs `body` with `secret`.

    The comparison takes the same time wherever the first differing character is, so a caller
    cannot guess a valid signature byte by byte. Hex case is ignored (the digest is the same).
    """
    if not signature or not secret:
        return False
    expected = sign(secret, body, prefix=prefix)
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode("ascii", "replace"))


def verify_forgejo(secret: str | bytes, body: bytes, signature: str | None) -> bool:
    """Forgejo/Gitea: bare hex, no prefix."""
    return verify(secret, body, signature)


def verify_github(secret: str | bytes, body: bytes, signature: str | None) -> bool:
    """GitHub: `sha256=<hex>`; a bare digest (or the SHA-1 `sha1=` header's value) is refused."""
    return verify(secret, body, signature, prefix=GITHUB_PREFIX)


def verify_any(secrets: list[str], body: bytes, signature: str | None, *, prefix: str = "") -> bool:
    """Whether any of `secrets` signs `body` (a secret being rotated is valid with its successor).

    Every candidate is checked, so the time taken does not tell which one matched.
    """
    matched = False
    for secret in secrets:
        matched |= verify(secret, body, signature, prefix=prefix)
    return matched
