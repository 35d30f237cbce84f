"""One orchestrator host, assembled: Postgres, a broker, the Runner gRPC server, run intake,
the outbox relay, the log store and the executor. The same class serves the standalone mode
(embedded Postgres, in-process broker) and the multi-host mode (URLs); see `standalone`."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc

from common.broker import Broker, Delivery, Subscription
from common.errors import SolsticeError
from common.http import BackgroundServer
from common.messages import RunRequest, decode
from orchestrator.admin import AdminService
from orchestrator.api import OrchestratorAPI
from orchestrator.backends.base import VMBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.db import Database
from orchestrator.effects import Effects
from orchestrator.executor import Executor, host_prefix
from orchestrator.hosts import HostRegistry
from orchestrator.intake import Intake
from orchestrator.logstore import LogStore
from orchestrator.outbox import OutboxRelay
from orchestrator.reaper import Reaper
from orchestrator.rpc import DatabaseUnavailable, RunnerService
from orchestrator.sessions import LogQuota, Sessions
from orchestrator.store import Store
from orchestrator.updates import Hub
from orchestrator.web import build_app
from protos import admin_pb2_grpc, runner_pb2_grpc

log = logging.getLogger(__name__)

GRPC_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]


def advertised(listen: str, port: int, advertise: str | None) -> str:
    """The address runners dial: the configured one, else the listen address with its port."""
    if advertise:
        return advertise
    host = listen.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


class ServiceFailed(SolsticeError):
    """A part the host cannot run without stopped; the process exits so it is restarted."""


class Orchestrator:
    """Start with `await start()`, stop with `await stop()`; `api` is the in-process API.

    `failure` resolves (with the reason) if a part the host cannot run without stops on its
    own (the log writer); whoever runs the host must then stop it and exit non-zero."""

    def __init__(self, config: OrchestratorConfig, *, db: Database, broker: Broker,
                 backend: VMBackend, secrets: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.db = db
        self.broker = broker
        self.backend = backend
        self.hub = Hub()
        self.sessions = Sessions()
        self.effects = Effects(self.hub, self.sessions)
        self.store = Store(db, config.host_name)
        self.logs = LogStore(db)
        self.intake = Intake(db, self.effects, default_job_timeout=config.default_job_timeout)
        self.relay = OutboxRelay(db, broker)
        self.effects.outbox_written = self.relay.kick
        self.api = OrchestratorAPI(db=db, intake=self.intake, store=self.store, hub=self.hub,
                                   effects=self.effects)
        self.secrets = dict(secrets or {})
        self.registry = HostRegistry(db, config.host_name, config.capacity,
                                     interval=config.host_heartbeat_interval,
                                     stale_after=config.host_stale_after)
        self.reaper = Reaper(db=db, backend=backend, registry=self.registry,
                             machine_prefix=host_prefix(config.host_name),
                             apply=self.effects.apply, max_retries=config.max_retries,
                             interval=config.reap_interval)
        self._background: list[asyncio.Task[None]] = []
        self.server: grpc.aio.Server | None = None
        self.executor: Executor | None = None
        self._runs: Subscription | None = None
        self.grpc_url = ""
        self.web: BackgroundServer | None = None
        self.failure: asyncio.Future[str] | None = None

    async def start(self) -> None:
        # Hold the host name and clear up after a previous life before taking any job.
        await self.registry.register()
        await self.reaper.at_start()
        self._background = [
            asyncio.create_task(self.registry.run(on_fenced=self._fenced), name="host-heartbeat"),
            asyncio.create_task(self.reaper.run(), name="reaper")]
        await self.backend.prepare()
        self.failure = asyncio.get_running_loop().create_future()
        self.logs.start(on_failure=self._fail)
        self.server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=[DatabaseUnavailable()])
        runner_pb2_grpc.add_RunnerServicer_to_server(RunnerService(
            store=self.store, sessions=self.sessions, logs=self.logs, hub=self.hub,
            effects=self.effects, broker=self.broker,
            log_drain_timeout=self.config.log_drain_timeout,
            log_quota=LogQuota(max_bytes=self.config.log_quota_bytes,
                               window=self.config.log_reorder_window)), self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(
            db=self.db, api=self.api, registry=self.registry, token=self.config.admin_token),
            self.server)
        port = self.server.add_insecure_port(self.config.grpc_listen)
        await self.server.start()
        self.grpc_url = advertised(self.config.grpc_listen, port, self.config.grpc_advertise)
        if self.config.web_listen:
            host, _, port = self.config.web_listen.rpartition(":")
            self.web = BackgroundServer(build_app(self.db), host, int(port))
            await self.web.start()
            self.relay.log_url_base = self.config.public_url or self.web.url
        await self.relay.start()
        self.executor = Executor(config=self.config, store=self.store, broker=self.broker,
                                 backend=self.backend, sessions=self.sessions,
                                 effects=self.effects, secrets=self.secrets,
                                 advertise_url=self.grpc_url)
        await self.executor.start()
        self._runs = await self.broker.consume_runs(self._on_run)
        log.info("orchestrator started", extra={"host": self.config.host_name,
                                                "grpc": self.grpc_url,
                                                "backend": self.backend.name,
                                                "capacity": self.config.capacity})

    async def _on_run(self, delivery: Delivery) -> None:
        request = decode(delivery.body, RunRequest)
        await self.intake.accept(request)
        await delivery.ack()

    def _fail(self, reason: str) -> None:
        if self.failure is not None and not self.failure.done():
            self.failure.set_result(reason)

    def _fenced(self) -> None:
        """Another process took this host name over: our leases are void, take no more jobs."""
        if self.executor is not None:
            self._background.append(asyncio.create_task(self.executor.stop_taking()))

    async def stop(self, grace: float = 0.0, *, hand_back: bool = False) -> None:
        """Stop taking work; give running jobs `grace` seconds, then end them (`error`) or,
        with `hand_back` (the drain on SIGTERM), re-queue them for other hosts; close down.
        A failed host (see `failure`) gives them no grace: it cannot store their logs."""
        if self.failure is not None and self.failure.done():
            grace = 0.0
        await self.registry.set_state("draining")
        if self._runs is not None:
            await self._runs.cancel()
        if self.executor is not None:
            await self.executor.stop(grace, hand_back=hand_back)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.registry.set_state("stopped")
        await self.relay.close()
        if self.web is not None:
            await self.web.stop()
        if self.server is not None:
            await self.server.stop(1.0)
        await self.logs.close()
        await self.backend.close()
        log.info("orchestrator stopped", extra={"host": self.config.host_name})
