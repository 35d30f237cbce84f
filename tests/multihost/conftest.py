"""Fixtures for the multi-host tests: a migrated database on the real PostgreSQL."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.db import Database, migrate


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    database = await Database.connect(pg_dsn)
    async with database.pool.acquire() as conn:
        await migrate(conn)
    yield database
    await database.close()
