"""Which webhook deliveries were already handled, persisted in PostgreSQL (`forge_deliveries`).

Forges redeliver a webhook when they did not get a 2xx in time, and operators press
"Redeliver". The integration checks `seen` first and answers a known delivery 200 without
doing anything; it calls `record` only once the delivery was fully handled (run published
and confirmed, failure status queued, or ignored on purpose). A delivery that failed half
way is not recorded, so the forge's retry is processed again. Two copies arriving at the
same moment may both publish; the orchestrator records one run per request id (the delivery
id), so that race never runs a commit twice.
"""
from __future__ import annotations

import asyncpg


class DeliveryLog:
    """The persisted set of handled delivery ids, per forge."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def seen(self, forge: str, delivery_id: str) -> str | None:
        """The recorded outcome of this delivery, or None if it was not handled yet."""
        return await self._pool.fetchval(
            "SELECT outcome FROM forge_deliveries WHERE forge = $1 AND delivery_id = $2",
            forge, delivery_id)

    async def record(self, forge: str, delivery_id: str, outcome: str) -> bool:
        """Remember that `delivery_id` was handled; False if it already was (kept as first written)."""
        status = await self._pool.execute(
            "INSERT INTO forge_deliveries (forge, delivery_id, outcome) VALUES ($1, $2, $3)"
            " ON CONFLICT (forge, delivery_id) DO NOTHING", forge, delivery_id, outcome)
        return status == "INSERT 0 1"
