"""Named admin tokens: created by an administrator (`ciadm token create NAME`), shown once,
stored as their SHA-256 only, listed with who created them and when they were last used,
revoked by name. The configured `admin_token` stays valid as the token named "bootstrap".

Every creation and revocation goes to the audit log, refusals included.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from orchestrator import audit, tokens
from orchestrator.adminauth import token_matches
from orchestrator.db import Database

BOOTSTRAP = "bootstrap"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAME_RULE = ("1 to 63 characters: lower-case letters, digits, '.', '_' and '-', starting with "
             "a letter or digit")


class TokenRefused(ValueError):
    """A token operation that cannot be done as asked; the message says why, `reason` is one
    of INVALID, EXISTS, UNKNOWN, REVOKED (for the caller's status code)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


INVALID, EXISTS, UNKNOWN, REVOKED = "invalid", "exists", "unknown", "revoked"


@dataclass(frozen=True)
class AdminTokenInfo:
    """What `ciadm token list` shows of a token: never the token or its hash."""

    name: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None


class AdminTokens:
    """The named tokens in `db`, and the bootstrap token from the configuration (None: the
    development opt-out, no bootstrap token)."""

    def __init__(self, db: Database, bootstrap: str | None) -> None:
        self.db = db
        self._bootstrap = bootstrap

    async def identify(self, given: str) -> str | None:
        """The name of the token `given`, or None if it is no valid token. Marks it used."""
        if self._bootstrap is not None and token_matches(given, self._bootstrap):
            return BOOTSTRAP
        row = await self.db.pool.fetchrow(
            "UPDATE admin_tokens SET last_used_at = now()"
            " WHERE token_hash = $1 AND revoked_at IS NULL RETURNING name, token_hash",
            tokens.digest(given))
        return row["name"] if row is not None and tokens.matches(given, row["token_hash"]) \
            else None

    async def active_hash(self, name: str) -> bytes | None:
        """The stored hash of the valid token `name` (the bootstrap token's too); None if
        there is none or it is revoked. Web sessions are bound to it."""
        if name == BOOTSTRAP:
            return tokens.digest(self._bootstrap) if self._bootstrap is not None else None
        return await self.db.pool.fetchval(
            "SELECT token_hash FROM admin_tokens WHERE name = $1 AND revoked_at IS NULL", name)

    async def create(self, name: str, actor: str) -> str:
        """A new token named `name`; returns the token, which is not stored and cannot be
        shown again."""
        try:
            if not NAME_RE.fullmatch(name):
                raise TokenRefused(f"{name!r} is not a token name: {NAME_RULE}", INVALID)
            if name == BOOTSTRAP:
                raise TokenRefused(f"{BOOTSTRAP!r} is the configured admin_token's name; "
                                   "choose another", INVALID)
            token, digest = tokens.mint()
            async with self.db.transaction() as conn:
                try:
                    await conn.execute("INSERT INTO admin_tokens (name, token_hash, created_by)"
                                       " VALUES ($1, $2, $3)", name, digest, actor)
                except asyncpg.UniqueViolationError:
                    raise TokenRefused(f"an admin token named {name!r} exists already (a "
                                       "revoked token keeps its name); choose another",
                                       EXISTS) from None
                await audit.record(conn, actor=actor, action="token.create", target=name)
            return token
        except TokenRefused as exc:
            await audit.record(self.db.pool, actor=actor, action="token.create", target=name,
                               outcome=f"refused: {exc}")
            raise

    async def revoke(self, name: str, actor: str) -> None:
        """Revoke the token `name` at once: its next call is refused."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE admin_tokens SET revoked_at = now(), revoked_by = $2"
                " WHERE name = $1 AND revoked_at IS NULL RETURNING name", name, actor)
            if row is not None:
                await audit.record(conn, actor=actor, action="token.revoke", target=name)
                return
            exists = await conn.fetchval("SELECT true FROM admin_tokens WHERE name = $1", name)
        reason = REVOKED
        if name == BOOTSTRAP:
            why = ("the bootstrap token is the configured admin_token: replace it in the "
                   "orchestrators' configuration and restart them")
        elif exists:
            why = f"the admin token {name!r} is revoked already"
        else:
            why, reason = f"no admin token named {name!r}; `ciadm token list` shows them", UNKNOWN
        await audit.record(self.db.pool, actor=actor, action="token.revoke", target=name,
                           outcome=f"refused: {why}")
        raise TokenRefused(why, reason)

    async def list(self) -> list[AdminTokenInfo]:
        """Every named token, revoked ones too, oldest first."""
        rows = await self.db.pool.fetch(
            "SELECT name, created_at, created_by, last_used_at, revoked_at, revoked_by"
            " FROM admin_tokens ORDER BY created_at, name")
        return [AdminTokenInfo(**dict(r)) for r in rows]
