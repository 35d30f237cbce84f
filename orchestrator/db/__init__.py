"""PostgreSQL, the orchestrator's source of truth in both modes.

`Database` wraps an asyncpg pool; `migrate` applies the numbered SQL files in `migrations/`
under an advisory lock; `embedded` starts a private server (the `pgserver` package) for the
standalone mode.
"""
from common.postgres import TRANSIENT_ERRORS
from orchestrator.db.database import Database
from orchestrator.db.migrate import migrate

__all__ = ["TRANSIENT_ERRORS", "Database", "migrate"]
