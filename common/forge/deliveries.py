"""Which manual runs were already handled, persisted in PostgreSQL (`forge_deliveries`).

`POST /runs` of the forge integration is planned in the request; a client repeating a
`request_id` (a retry after a timeout) is answered `duplicate`: `seen` first, `record` once
the run was published or ignored on purpose. Webhook deliveries are deduplicated by the inbox
(`common.forge.inbox`) instead. Two copies arriving at the same moment may both publish; the
orchestrator records one run per request id, so that race never runs a commit twice.
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
