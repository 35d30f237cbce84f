"""Shared fixtures: a fresh PostgreSQL database and a private RabbitMQ topology per test.

Both talk to the real servers on 127.0.0.1 (see scripts/services.sh)."""
from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

PG_ADMIN_DSN = os.environ.get("SOLSTICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("SOLSTICE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """DSN of a new, empty database, dropped after the test."""
    name = f"solstice_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture
def broker_prefix() -> str:
    """A topology prefix of this test's own, so tests never see each other's messages."""
    return f"solstice-test-{uuid.uuid4().hex[:10]}"
