"""Named admin tokens live in PostgreSQL: while it is unreachable, a call with one is told to
retry (gRPC UNAVAILABLE, HTTP 503), not refused as a wrong token nor failed as UNKNOWN."""
from __future__ import annotations

import re

import grpc
import httpx
import pytest

from protos import admin_pb2, admin_pb2_grpc
from tests.orchestrator.conftest import Factory
from tests.tcp_proxy import TcpProxy


async def test_token_checks_during_a_database_outage(orchestrator_factory: Factory,
                                                     pg_dsn: str) -> None:
    proxy = TcpProxy("127.0.0.1", int(re.search(r":(\d+)/", pg_dsn).group(1)))
    await proxy.start()
    proxied = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", pg_dsn)
    harness = await orchestrator_factory(database_url=proxied, web_listen="127.0.0.1:0")
    token = await harness.orchestrator.admin_tokens.create("outage-test", "token:bootstrap")
    metadata = (("authorization", f"Bearer {token}"),)
    page = f"{harness.orchestrator.web.url}/runs/00000000-0000-0000-0000-000000000000"
    async with grpc.aio.insecure_channel(harness.orchestrator.admin_url) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        await stub.ListRuns(admin_pb2.ListRunsRequest(), metadata=metadata)
        await proxy.stop()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListRuns(admin_pb2.ListRunsRequest(), metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "admin token cannot be checked" in raised.value.details()
            async with httpx.AsyncClient() as http:
                down = await http.get(page, headers={"Authorization": f"Bearer {token}"})
            assert down.status_code == 503 and "retry" in down.text
        finally:
            await proxy.start()
        for _ in range(3):  # the pool's broken connections are replaced on use
            try:
                listed = await stub.ListRuns(admin_pb2.ListRunsRequest(), metadata=metadata)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
        assert list(listed.runs) == []
