"""Signed, expiring grants to one run's web pages: what `web_access = "signed"` puts into the
links the integrations publish (`JobEvent.log_url`, the forge's status and check run), so that
whoever sees the commit on the forge opens its run, and nobody enumerates the others.

A grant is `RUN_ID.EXPIRY.MAC`: the run's id, the expiry in Unix seconds, and an HMAC-SHA256
(truncated to 128 bits, base64url) of both under the key every orchestrator host shares
(`web_grant_key_file`, else derived from the admin token). Nothing is stored: any host checks
any grant, and changing the key voids every grant issued before.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

MAC_BYTES = 16
DOMAIN = b"solstice web grant v1"
# The minimum length of a configured key (`web_grant_key_file`): as strong as the MAC.
MIN_KEY_LENGTH = 32


class GrantRefused(PermissionError):
    """The grant does not open the page: malformed, forged, expired or for another run. The
    message says which, for the person holding the link."""


def derive_key(secret: str, purpose: bytes = DOMAIN) -> bytes:
    """A key for `purpose` derived from a configured secret (never the secret itself)."""
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


def _mac(key: bytes, run_id: uuid.UUID, expiry: int) -> str:
    digest = hmac.new(key, DOMAIN + f":{run_id}:{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:MAC_BYTES]).rstrip(b"=").decode()


@dataclass(frozen=True)
class Grant:
    """A grant that checked out: the run it opens, until when."""

    run_id: uuid.UUID
    expires_at: int  # Unix seconds

    @property
    def seconds_left(self) -> float:
        return self.expires_at - time.time()


class GrantSigner:
    """Issues and checks grants with `key`; each issued grant is valid `ttl` seconds."""

    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = key
        self.ttl = ttl

    def issue(self, run_id: uuid.UUID, now: float | None = None) -> str:
        """A grant to run `run_id`'s pages, valid `ttl` seconds from `now`."""
        expiry = int((time.time() if now is None else now) + self.ttl)
        return f"{run_id}.{expiry}.{_mac(self._key, run_id, expiry)}"

    def check(self, grant: str, run_id: uuid.UUID | None, now: float | None = None) -> Grant:
        """The grant, if it opens `run_id`'s pages now (None: a page of no known run); else
        GrantRefused saying why. Another run's page and a page of no run are refused alike."""
        parts = grant.split(".")
        try:
            granted, expiry = uuid.UUID(parts[0]), int(parts[1])
            if len(parts) != 3:
                raise ValueError(grant)
        except (ValueError, IndexError):
            raise GrantRefused("this link's grant is malformed (cut short when copied?); open "
                               "the run again from the commit's status on the forge") from None
        if not hmac.compare_digest(parts[2].encode(), _mac(self._key, granted, expiry).encode()):
            raise GrantRefused("this link's grant is not valid: it was altered, or signed by "
                               "another installation (or before its key changed)")
        if granted != run_id:
            raise GrantRefused(f"this link's grant opens the pages of run {granted} only")
        if expiry <= (time.time() if now is None else now):
            when = datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%d %H:%M UTC")
            raise GrantRefused(f"this link expired on {when}; ask the CI's operators for the "
                               "log, or sign in with the admin token")
        return Grant(granted, expiry)


def grant_link(url: str, signer: GrantSigner | None, run_id: uuid.UUID) -> str:
    """`url`, a page of run `run_id`, with a grant to the run when links are signed."""
    return url if signer is None else f"{url}?grant={signer.issue(run_id)}"
