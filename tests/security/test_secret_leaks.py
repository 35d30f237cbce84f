"""A secret from the store reaches its job only inside `GetJob`: after a real run (real
PostgreSQL, RabbitMQ and gRPC, the real runner on the local backend) its value is in none of
the places it could leak to.

Looked at: every message this orchestrator published to RabbitMQ (recorded at the client's
one publish path, and caught again by a tap queue bound to the topic exchanges), the runner
bootstrap the backend got and the cloud-init / NoCloud data the bhyve and qemu backends would
make of it, the command line of every process on the machine while the job ran, the stored
log, the machine's console log, the orchestrator's own log records, and every column of every
table, dumped as text.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import psutil
import pytest

from common.broker.amqp import AmqpBroker
from common.masking import secret_pieces
from common.messages import EventKind, Repo, RunRequest
from orchestrator import standalone
from orchestrator.backends import cloudinit
from orchestrator.backends.base import VM, RunnerBootstrap
from orchestrator.backends.local import LocalBackend
from orchestrator.backends.seed import write_seed
from orchestrator.config import OrchestratorConfig
from orchestrator.secretstore import parse_scope
from tests.joblog import stored_log
from tests.orchestrator.conftest import ADMIN_TOKEN
from tests.orchestrator.test_secret_store import key_file

SECRET = "Zq8-known-secret-value-41c7"
WORKFLOW = '''
workflow {
    job id="deploy" runs_on="local" {
        secrets "DEPLOY_TOKEN"
        step name="print" run="echo token=$DEPLOY_TOKEN; printf %s \\"$DEPLOY_TOKEN\\" | base64; sleep 1"
        step name="child" run="sh -c 'test -n \\"$DEPLOY_TOKEN\\" && sleep 1 && echo child-saw-it'"
    }
}'''


class RecordingBroker(AmqpBroker):
    """The real RabbitMQ broker, keeping a copy of everything it publishes."""

    published: list[tuple[str, str, bytes, dict[str, Any]]] = []

    async def _publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: Any) -> None:
        RecordingBroker.published.append((exchange, routing_key, body, kwargs))
        await super()._publish(exchange, routing_key, body, **kwargs)


class RecordingBackend(LocalBackend):
    """The local backend, keeping what it was given and each machine's console log."""

    bootstraps: list[RunnerBootstrap] = []
    consoles: list[str] = []

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        RecordingBackend.bootstraps.append(bootstrap)
        await super().start(vm, bootstrap)

    async def destroy(self, vm: VM) -> None:
        RecordingBackend.consoles.append(await self.console_log(vm))
        await super().destroy(vm)


def command_lines(found: set[str], stop: threading.Event) -> None:
    """Every process's command line on this machine, until `stop`."""
    while not stop.wait(0.05):
        for proc in psutil.process_iter(["cmdline"]):
            found.add("\0".join(proc.info["cmdline"] or ()))


async def dump_database(dsn: str) -> str:
    """Every row of every table of the public schema, as text (bytea as its bytes too)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        parts = []
        for table in tables:
            for row in await conn.fetch(f'SELECT * FROM "{table}"'):
                for value in row.values():
                    if isinstance(value, bytes):
                        parts.append(value.decode("latin-1"))
                    parts.append(str(value))
            parts.extend(r["t"] for r in await conn.fetch(f'SELECT t::text AS t FROM "{table}" t'))
        return "\n".join(parts)
    finally:
        await conn.close()


async def test_a_stored_secret_leaks_nowhere(pg_dsn: str, amqp_url: str, broker_prefix: str,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    RecordingBroker.published, RecordingBackend.bootstraps, RecordingBackend.consoles = [], [], []
    monkeypatch.setattr(standalone, "open_broker",
                        lambda url, prefix: RecordingBroker(url, prefix))
    source = tmp_path / "src"
    source.mkdir()
    config = OrchestratorConfig(
        host_name=f"leak-{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
        database_url=pg_dsn, amqp_url=amqp_url, broker_prefix=broker_prefix,
        grpc_listen="127.0.0.1:0", admin_listen="127.0.0.1:0", admin_token=ADMIN_TOKEN,
        capacity={"local": 2}, allow_local_backend=True, boot_timeout=30,
        secret_keys=[key_file(tmp_path, "k1")], blob_store={"path": tmp_path / "blobs"})
    tap_messages: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with standalone.running(config, backend=RecordingBackend(tmp_path / "machines")) as orch:
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel()
        tap = await channel.declare_queue(f"{broker_prefix}.tap", auto_delete=True)
        for exchange in ("events", "logs", "dlx"):  # every exchange but the default one
            await tap.bind(f"{broker_prefix}.{exchange}", routing_key="#")
        await orch.secret_store.set(parse_scope("repo:local/src"), "DEPLOY_TOKEN", SECRET,
                                    set_by="test", branches=["main"], events=["push"])
        request = RunRequest(
            request_id=str(uuid.uuid4()),
            repo=Repo(forge="local", owner="local", name="src", clone_url=f"file://{source}"),
            commit_sha="0" * 40, ref="refs/heads/main", event=EventKind.PUSH, branch="main",
            workflow_source=WORKFLOW)
        seen: set[str] = set()
        stop = threading.Event()
        watcher = asyncio.create_task(asyncio.to_thread(command_lines, seen, stop))
        await orch.broker.publish_run(request)
        async with asyncio.timeout(60):
            while (run_id := await orch.db.pool.fetchval(
                    "SELECT id FROM runs WHERE request_id = $1", request.request_id)) is None:
                await asyncio.sleep(0.05)
            summary = await orch.api.wait(run_id)
        stop.set()
        await watcher
        assert summary.state == "success", summary
        log = b"".join([await stored_log(orch, job.job_id) for job in summary.jobs])
        assert log, "the job's log was read (rows or its compacted archive)"
        await asyncio.sleep(0.5)  # the last events reach the tap
        while (message := await tap.get(no_ack=True, fail=False)) is not None:
            tap_messages.append(message)
        await connection.close()
    value = SECRET.encode()
    forms, _ = secret_pieces([SECRET])

    # The job did get it: masked in its log, and the child process saw it.
    assert b"token=***" in log and b"child-saw-it" in log
    assert not any(form in log for form in forms), "a form of the secret is in the stored log"
    # RabbitMQ: what was published, and what the tap queue received.
    assert RecordingBroker.published and tap_messages
    kinds = {exchange or routing_key.split(".")[1] for exchange, routing_key, *_ in
             RecordingBroker.published}
    assert any("events" in k for k in kinds) and any("jobs" in k for k in kinds), kinds
    for exchange, routing_key, body, kwargs in RecordingBroker.published:
        assert value not in body and SECRET not in repr(kwargs), (exchange, routing_key)
    tapped = {message.exchange for message in tap_messages}
    assert {f"{broker_prefix}.events", f"{broker_prefix}.logs"} <= tapped, tapped
    for message in tap_messages:
        assert value not in message.body and SECRET not in repr(message.headers)
    # What the backend got, and the NoCloud data bhyve and qemu would make of it.
    (bootstrap,) = RecordingBackend.bootstraps
    assert SECRET not in repr(bootstrap)
    seed = tmp_path / "seed.iso"
    write_seed(seed, user_data=cloudinit.user_data(bootstrap), meta_data=cloudinit.meta_data("m"))
    assert value not in seed.read_bytes() and SECRET not in cloudinit.runner_toml(bootstrap)
    assert all(SECRET not in console for console in RecordingBackend.consoles)
    # Command lines of every process while the job ran (the runner and its steps included).
    assert any("local_launcher" in line for line in seen)  # the runner's process
    assert any("sleep 1 && echo child-saw-it" in line for line in seen)  # a step's
    assert not [line for line in seen if SECRET in line]
    # The orchestrator's own log records, and the database in clear.
    assert not [r for r in caplog.records if SECRET in r.getMessage() or SECRET in repr(r.__dict__)]
    dump = await dump_database(pg_dsn)
    assert "DEPLOY_TOKEN" in dump  # the dump does hold the secrets table
    assert SECRET not in dump and base64.b64encode(value).decode() not in dump
    assert value.hex() not in dump
