"""The Admin RPCs of the secret store (`ciadm secret ...`), mixed into `AdminService`.

Values arrive in `SetSecret` over the Admin listener (loopback, behind the admin token) and
are never sent back: replies carry names, scopes, filters, key ids and who set what when.
"""
from __future__ import annotations

import grpc

from common.errors import SolsticeError
from orchestrator.adminauth import caller
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
    """`SetSecret`, `ListSecrets`, `DeleteSecret`, `RotateSecretKey`."""

    secrets: SecretStore

    async def SetSecret(self, request: admin_pb2.SetSecretRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.SecretInfo:
        try:
            info = await self.secrets.set(parse_scope(request.scope), request.name, request.value,
                                          branches=list(request.branches),
                                          events=list(request.events), set_by=caller(context))
        except (InvalidScope, InvalidSecret, MissingKey) as exc:
            await _abort(context, exc)
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
            await _abort(context, exc)
        deleted = await self.secrets.delete(scope, request.name, deleted_by=caller(context))
        if deleted is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no secret {request.name!r} at scope {scope}")
        return _message(deleted)

    async def RotateSecretKey(self, request: admin_pb2.RotateSecretKeyRequest,
                              context: grpc.aio.ServicerContext
                              ) -> admin_pb2.RotateSecretKeyReply:
        try:
            moved, unchanged = await self.secrets.rotate(by=caller(context))
        except (MissingKey, DecryptionFailed) as exc:
            await _abort(context, exc)
        return admin_pb2.RotateSecretKeyReply(reencrypted=moved, unchanged=unchanged,
                                              key_id=self.secrets.keys.newest or "")
