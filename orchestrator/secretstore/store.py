"""The secrets table (migration 0007) and how a job's secrets are found.

A job gets exactly the secrets its workflow lists, and only in a trusted run. For each name
the narrowest scope holding a secret of that name whose filters allow the run wins: branch
patterns (`*` within a path segment, `**` across, `?`; matched against the run's branch, the
head branch for a pull request, never its target) and event kinds. A name with no such secret
fails the job before its machine is provisioned, naming the scopes searched.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from common.errors import SolsticeError
from common.messages import EventKind, Repo
from common.workflow.loader import NAME_RE
from common.workflow.plan import glob_matches
from orchestrator.db import Database
from orchestrator.secretstore.keys import DecryptionFailed, KeyRing, MissingKey, Sealed
from orchestrator.secretstore.scopes import Scope, scopes_for

log = logging.getLogger(__name__)

# Shorter values are refused: the masker would replace them in every log line.
MIN_VALUE_LENGTH = 4
MAX_VALUE_BYTES = 65536
MAX_PATTERNS = 32
MAX_PATTERN_LENGTH = 255
EVENTS = tuple(kind.value for kind in EventKind)
SET_HINT = "set it with `ciadm secret set SCOPE NAME` (scopes: global, owner:ORG, repo:OWNER/NAME)"


class InvalidSecret(SolsticeError):
    """A name, value or filter `ciadm secret set` may not store."""


class SecretsUnavailable(SolsticeError):
    """A job cannot have the secrets it lists. `infrastructure` when the operator's keys are
    at fault (the job ends `error`), not the repository's configuration (`failure`)."""

    def __init__(self, message: str, *, hint: str | None = None,
                 infrastructure: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.infrastructure = infrastructure


@dataclass(frozen=True)
class RunContext:
    """What decides which secrets a job may have."""

    repo: Repo
    event: str
    branch: str | None
    trusted: bool


@dataclass(frozen=True)
class SecretInfo:
    """A stored secret without its value."""

    scope: Scope
    name: str
    branches: tuple[str, ...]
    events: tuple[str, ...]
    key_id: str
    set_by: str
    set_at: datetime

    def allows(self, run: RunContext) -> bool:
        """Whether the secret's filters let `run` have it."""
        if self.events and run.event not in self.events:
            return False
        if self.branches:
            return run.branch is not None and any(glob_matches(p, run.branch)
                                                  for p in self.branches)
        return True

    @property
    def filters(self) -> str:
        """The filters as `ciadm secret list` and error messages show them."""
        parts = []
        if self.branches:
            parts.append("branches " + ", ".join(self.branches))
        if self.events:
            parts.append("events " + ", ".join(self.events))
        return "; ".join(parts) or "any branch and event"


class JobSecrets(Protocol):
    """Where the executor gets a job's secret values from."""

    async def for_job(self, names: Sequence[str], run: RunContext) -> dict[str, str]:
        """The value of every name in `names` for `run`, or `SecretsUnavailable`."""


class StaticSecrets:
    """Values given to this process (`cidev run --secret`), for every repository."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    async def for_job(self, names: Sequence[str], run: RunContext) -> dict[str, str]:
        missing = [n for n in names if n not in self._values]
        if missing:
            raise SecretsUnavailable(f"secret(s) {', '.join(missing)} are not configured on "
                                     "this orchestrator (for `cidev run`, pass --secret NAME)")
        return {n: self._values[n] for n in names}


def _associated(scope: Scope, name: str) -> bytes:
    return scope.associated_data + b"\0" + name.encode()


def _info(row: asyncpg.Record) -> SecretInfo:
    return SecretInfo(scope=Scope(row["scope_kind"], row["scope_forge"], row["scope_value"]),
                      name=row["name"], branches=tuple(row["branches"]),
                      events=tuple(row["events"]), key_id=row["key_id"], set_by=row["set_by"],
                      set_at=row["set_at"])


def check_secret(name: str, value: str, branches: Sequence[str], events: Sequence[str]) -> None:
    """Refuse what may not be stored, with the reason (never the value)."""
    if not NAME_RE.fullmatch(name) or len(name) > 255:
        raise InvalidSecret(f"{name!r} is not a secret name",
                            hint="letters, digits and _, not starting with a digit (the name "
                                 "becomes an environment variable of the job)")
    if len(value.strip()) < MIN_VALUE_LENGTH:
        raise InvalidSecret(f"the value of {name} is shorter than {MIN_VALUE_LENGTH} characters",
                            hint="a value that short would be masked everywhere it occurs in a "
                                 "log, wrecking the log and revealing the value")
    if len(value.encode()) > MAX_VALUE_BYTES or "\0" in value:
        raise InvalidSecret(f"the value of {name} is longer than {MAX_VALUE_BYTES} bytes or "
                            "holds a NUL", hint="environment variables cannot carry either")
    if len(branches) > MAX_PATTERNS or any(
            not p or len(p) > MAX_PATTERN_LENGTH or "\0" in p for p in branches):
        raise InvalidSecret(f"branch patterns: at most {MAX_PATTERNS}, each 1 to "
                            f"{MAX_PATTERN_LENGTH} characters", hint="e.g. --branch main "
                            "--branch 'release/*'")
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise InvalidSecret(f"unknown event kind(s) {', '.join(map(repr, unknown))}",
                            hint=f"event kinds: {', '.join(EVENTS)}")


class SecretStore:
    """Secrets in PostgreSQL, sealed with `keys`."""

    def __init__(self, db: Database, keys: KeyRing) -> None:
        self.db = db
        self.keys = keys

    async def set(self, scope: Scope, name: str, value: str, *, branches: Sequence[str] = (),
                  events: Sequence[str] = (), set_by: str) -> SecretInfo:
        """Store (or replace) `name` at `scope`."""
        check_secret(name, value, branches, events)
        sealed = self.keys.seal(value, _associated(scope, name))
        row = await self.db.pool.fetchrow(
            "INSERT INTO secrets (scope_kind, scope_forge, scope_value, name, ciphertext, nonce,"
            " key_id, branches, events, set_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (scope_kind, scope_forge, scope_value, name) DO UPDATE SET"
            " ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce, key_id = EXCLUDED.key_id,"
            " branches = EXCLUDED.branches, events = EXCLUDED.events, set_by = EXCLUDED.set_by,"
            " set_at = now() RETURNING *",
            scope.kind, scope.forge, scope.value, name, sealed.ciphertext, sealed.nonce,
            sealed.key_id, list(dict.fromkeys(branches)), list(dict.fromkeys(events)), set_by)
        log.info("secret set", extra={"scope": str(scope), "secret": name, "by": set_by})
        return _info(row)

    async def list(self, scope: Scope | None = None) -> list[SecretInfo]:
        """Every secret (of `scope` only, when given), by scope then name."""
        rows = await self.db.pool.fetch(
            "SELECT scope_kind, scope_forge, scope_value, name, branches, events, key_id,"
            " set_by, set_at FROM secrets WHERE $1::text IS NULL OR (scope_kind = $1"
            " AND scope_forge = $2 AND scope_value = $3)"
            " ORDER BY scope_kind, scope_forge, scope_value, name",
            scope.kind if scope else None, scope.forge if scope else "",
            scope.value if scope else "")
        return [_info(row) for row in rows]

    async def delete(self, scope: Scope, name: str, *, deleted_by: str) -> SecretInfo | None:
        """Remove `name` at `scope`; what was removed, None when there was none."""
        row = await self.db.pool.fetchrow(
            "DELETE FROM secrets WHERE scope_kind = $1 AND scope_forge = $2 AND scope_value = $3"
            " AND name = $4 RETURNING *", scope.kind, scope.forge, scope.value, name)
        if row is not None:
            log.info("secret deleted", extra={"scope": str(scope), "secret": name,
                                              "by": deleted_by})
        return _info(row) if row is not None else None

    async def rotate(self, *, by: str) -> tuple[int, int]:
        """Re-encrypt every secret not under the newest key; (re-encrypted, already were).
        All or nothing: a value whose key is missing stops it with that key's id."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch("SELECT * FROM secrets ORDER BY id FOR UPDATE")
            moved = 0
            for row in rows:
                if row["key_id"] == self.keys.newest:
                    continue
                info = _info(row)
                associated = _associated(info.scope, info.name)
                value = self.keys.open(Sealed(row["ciphertext"], row["nonce"], row["key_id"]),
                                       associated, f"secret {info.name} ({info.scope})")
                sealed = self.keys.seal(value, associated)
                await conn.execute("UPDATE secrets SET ciphertext = $2, nonce = $3, key_id = $4"
                                   " WHERE id = $1", row["id"], sealed.ciphertext, sealed.nonce,
                                   sealed.key_id)
                moved += 1
        log.info("secrets re-encrypted", extra={"count": moved, "key": self.keys.newest,
                                                "by": by})
        return moved, len(rows) - moved

    async def for_job(self, names: Sequence[str], run: RunContext) -> dict[str, str]:
        if not names:
            return {}
        searched = scopes_for(run.repo)
        rank = {scope: i for i, scope in enumerate(searched)}
        rows = await self.db.pool.fetch(
            "SELECT * FROM secrets WHERE name = ANY($1) AND (scope_kind, scope_forge, scope_value)"
            " IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))",
            list(names), [s.kind for s in searched], [s.forge for s in searched],
            [s.value for s in searched])
        candidates = sorted(rows, key=lambda r: rank[_info(r).scope])
        values: dict[str, str] = {}
        problems: list[str] = []
        for name in names:
            mine = [(row, _info(row)) for row in candidates if row["name"] == name]
            chosen = next(((row, info) for row, info in mine if info.allows(run)), None)
            if chosen is None:
                problems.append(self._not_found(name, run, searched, [i for _, i in mine]))
                continue
            row, info = chosen
            try:
                values[name] = self.keys.open(
                    Sealed(row["ciphertext"], row["nonce"], row["key_id"]),
                    _associated(info.scope, name), f"secret {name} ({info.scope})")
            except (MissingKey, DecryptionFailed) as exc:
                raise SecretsUnavailable(exc.message, hint=exc.hint, infrastructure=True) from None
        if problems:
            raise SecretsUnavailable("; ".join(problems), hint=SET_HINT)
        return values

    @staticmethod
    def _not_found(name: str, run: RunContext, searched: list[Scope],
                   filtered: list[SecretInfo]) -> str:
        where = run.branch if run.branch is not None else "no branch"
        message = (f"secret {name} is not set for {run.repo.forge}:{run.repo.full_name} "
                   f"(searched {', '.join(map(str, searched))})")
        if filtered:
            message += "; its filters exclude this " + run.event + f" run ({where}): " + ", ".join(
                f"{info.scope} allows {info.filters}" for info in filtered)
        return message
