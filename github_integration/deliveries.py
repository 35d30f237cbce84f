"""Webhook deliveries already acted on, persisted so a redelivery publishes nothing new.

A delivery id is recorded only after the broker confirmed its run request: a delivery that
failed (answered 503) stays unrecorded, so GitHub's redelivery of it is processed afresh.
"""
from __future__ import annotations

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS github_deliveries (
    delivery_id text PRIMARY KEY,
    event text NOT NULL,
    request_id text,
    received_at timestamptz NOT NULL DEFAULT now()
)
"""


class DeliveryLog:
    """The `github_deliveries` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_schema(self) -> None:
        """Create the table if missing (idempotent; safe with several instances starting)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('github_deliveries'))")
            await conn.execute(SCHEMA)

    async def seen(self, delivery_id: str) -> bool:
        return await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM github_deliveries WHERE delivery_id = $1)", delivery_id)

    async def record(self, delivery_id: str, event: str, request_id: str | None) -> None:
        await self._pool.execute(
            "INSERT INTO github_deliveries (delivery_id, event, request_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (delivery_id) DO NOTHING", delivery_id, event, request_id)
