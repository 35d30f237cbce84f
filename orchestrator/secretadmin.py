"""The Admin RPCs of the secret store (`ciadm secret ...`), mixed into `AdminService`.

Values arrive in `SetSecret` over the Admin listener (loopback, behind the admin token) and
are never sent back: replies carry names, scopes, filters, key ids and who set what when.
"""
from __future__ import annotations

import grpc

from common.errors import SolsticeError
from orchestrator import audit
from orchestrator.adminauth import actor
from orchestrator.db import Database
from orchestrator.secretstore import SecretInfo, SecretStore, parse_scope
from orchestrator.secretstore.keys import DecryptionFailed, MissingKey
from orchestrator.secretstore.scopes import InvalidScope
from orchestrator.secretstore.store import InvalidSecret
from protos import admin_pb2


def _message(info: SecretInfo) -> admin_pb2.SecretInfo:
    return admin_pb2.SecretInfo(scope=str(info.scope), name=info.name, branches=info.branches,
                                events=info.events, key_id=info.key_id, set_by=info.set_by,
                                set_unix_ms=int(info.set_at.timestamp() * 1000))


async def _abort(context: grpc.aio.ServicerContext, exc: SolsticeError) -> None:
    code = (grpc.StatusCode.INVALID_ARGUMENT if isinstance(exc, InvalidScope | InvalidSecret)
            else grpc.StatusCode.FAILED_PRECONDITION)
    await context.abort(code, str(exc))


class SecretAdmin:
    """`SetSecret`, `ListSecrets`, `DeleteSecret`, `RotateSecretKey`; every change, and every
    refused one, goes to the audit log (never the value)."""

    secrets: SecretStore
    db: Database

    async def _audit(self, action: str, target: str, outcome: str = "ok") -> None:
        await audit.record(self.db.pool, actor=actor(), action=action, target=target,
                           outcome=outcome)

    async def _refused(self, context: grpc.aio.ServicerContext, action: str, target: str,
                       exc: SolsticeError) -> None:
        await self._audit(action, target, f"refused: {exc.message}")
        await _abort(context, exc)

    async def SetSecret(self, request: admin_pb2.SetSecretRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.SecretInfo:
        try:
            info = await self.secrets.set(parse_scope(request.scope), request.name, request.value,
                                          branches=list(request.branches),
                                          events=list(request.events), set_by=actor())
        except (InvalidScope, InvalidSecret, MissingKey) as exc:
            await self._refused(context, "secret.set", f"{request.scope} {request.name}", exc)
        await self._audit("secret.set", f"{info.scope} {info.name}")
        return _message(info)

    async def ListSecrets(self, request: admin_pb2.ListSecretsRequest,
                          context: grpc.aio.ServicerContext) -> admin_pb2.ListSecretsReply:
        try:
            scope = parse_scope(request.scope) if request.scope else None
        except InvalidScope as exc:
            await _abort(context, exc)
        return admin_pb2.ListSecretsReply(
            secrets=[_message(info) for info in await self.secrets.list(scope)])

    async def DeleteSecret(self, request: admin_pb2.SecretRef,
                           context: grpc.aio.ServicerContext) -> admin_pb2.SecretInfo:
        try:
            scope = parse_scope(request.scope)
        except InvalidScope as exc:
            await self._refused(context, "secret.delete", f"{request.scope} {request.name}", exc)
        deleted = await self.secrets.delete(scope, request.name, deleted_by=actor())
        if deleted is None:
            message = f"no secret {request.name!r} at scope {scope}"
            await self._audit("secret.delete", f"{scope} {request.name}", f"refused: {message}")
            await context.abort(grpc.StatusCode.NOT_FOUND, message)
        await self._audit("secret.delete", f"{scope} {request.name}")
        return _message(deleted)

    async def RotateSecretKey(self, request: admin_pb2.RotateSecretKeyRequest,
                              context: grpc.aio.ServicerContext
                              ) -> admin_pb2.RotateSecretKeyReply:
        try:
            moved, unchanged = await self.secrets.rotate(by=actor())
        except (MissingKey, DecryptionFailed) as exc:
            await self._refused(context, "secret.rotate-key", "", exc)
        await self._audit("secret.rotate-key", self.secrets.keys.newest or "")
        return admin_pb2.RotateSecretKeyReply(reencrypted=moved, unchanged=unchanged,
                                              key_id=self.secrets.keys.newest or "")
