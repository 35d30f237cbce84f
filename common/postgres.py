"""Connecting to PostgreSQL: an asyncpg pool, retried while the server starts."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from common.errors import SolsticeError
from common.retry import Backoff, retry_async

# What a restarting or unreachable server raises (a dropped connection, an administrator or
# crash shutdown, "cannot connect now"): callers retry these and let every other error through.
# Retry only what is safe to repeat when its commit did reach the server: the orchestrator's
# transitions are conditional UPDATEs (a second try is refused, not applied twice).
# InternalClientError: a pooled connection the server dropped in the middle of an operation.
TRANSIENT_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                    asyncpg.exceptions.OperatorInterventionError, asyncpg.InternalClientError)
# Anything PostgreSQL, or reaching it, can raise: an HTTP edge answers 503 on these (the
# caller retries), a periodic task (heartbeat, reaper pass) logs them and tries next round.
# Not for retrying a single operation: a statement the server refused is not repeated.
DATABASE_ERRORS = (*TRANSIENT_ERRORS, asyncpg.PostgresError)


class DatabaseError(SolsticeError):
    """PostgreSQL cannot be reached or refused us."""


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool `reset` that sends nothing: asyncpg still rolls back an open transaction and
    drops the connection's listeners on release (client side)."""


async def create_pool(dsn: str, *, min_size: int, max_size: int, attempts: int = 10,
                      init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                      server_settings: dict[str, str] | None = None,
                      reset_sessions: bool = True) -> asyncpg.Pool:
    """A pool on `dsn`, retrying (`attempts` tries with backoff) while the server starts;
    `DatabaseError` with what to check when it cannot be reached.

    `reset_sessions=False` skips asyncpg's reset statement (`RESET ALL`, `UNLISTEN *`...) on
    every release, a round trip per query: only for a pool whose users leave no session state
    behind (no `SET`, advisory locks released, listeners removed)."""
    async def create() -> asyncpg.Pool:
        return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init,
                                         server_settings=server_settings,
                                         reset=None if reset_sessions else _keep_session)

    try:
        return await retry_async(create, retry_on=(OSError, asyncpg.CannotConnectNowError),
                                 attempts=attempts, backoff=Backoff(initial=0.2, maximum=3),
                                 describe="connecting to PostgreSQL")
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}",
                            hint="check the database URL (--database-url) and that the "
                                 "server is running") from exc
