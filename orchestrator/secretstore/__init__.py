"""Secrets of production jobs: stored in PostgreSQL encrypted with AES-GCM under keys that
never enter the database (`keys`), scoped globally, per forge owner or per repository
(`scopes`), and resolved for a job by name, scope and filters (`store`).

A value leaves this package only towards the job it was resolved for (inside `GetJob`) and
never appears in a log line, an error message or an Admin reply.
"""
from orchestrator.secretstore.keys import KeyRing, SecretKeyConfig, load_keyring
from orchestrator.secretstore.scopes import Scope, parse_scope
from orchestrator.secretstore.store import (
    MIN_VALUE_LENGTH,
    JobSecrets,
    RunContext,
    SecretInfo,
    SecretStore,
    SecretsUnavailable,
    StaticSecrets,
)

__all__ = ["MIN_VALUE_LENGTH", "JobSecrets", "KeyRing", "RunContext", "Scope", "SecretInfo",
           "SecretKeyConfig", "SecretStore", "SecretsUnavailable", "StaticSecrets",
           "load_keyring", "parse_scope"]
