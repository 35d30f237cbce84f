"""One orchestrator host, assembled: Postgres, a broker, the Runner gRPC server (what job
machines reach), the Admin gRPC server on a listener of its own behind the admin token, run
intake, the outbox relay, the log store and the executor. The same class serves the standalone mode
(embedded Postgres, in-process broker) and the multi-host mode (URLs); see `standalone`.

Its long-lived tasks (heartbeat, reaper, LISTEN, outbox relay, label workers, jobs, web
server, log compactor, retention sweeper) run under `supervisor` (`common.supervise`):
`solstice-orchestrator` waits on it and exits non-zero when one of them fails."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc

from common.broker import Broker, Delivery, Subscription
from common.errors import ConfigError
from common.health import broker_check, database_check
from common.http import BackgroundServer
from common.messages import RunApproval, decode_run_queue
from common.metrics import metrics_route
from common.supervise import Supervisor
from orchestrator import metrics
from orchestrator.admin import AdminService
from orchestrator.adminauth import AdminTokenRequired, resolve_access, warn_about
from orchestrator.admintokens import AdminTokens
from orchestrator.api import OrchestratorAPI
from orchestrator.artifact_copy import copy_chunk_rows
from orchestrator.artifacts import ArtifactLimits, ArtifactStore
from orchestrator.backends.base import VMBackend
from orchestrator.blobstore import BlobStore, open_blob_store
from orchestrator.checkout_credentials import CheckoutCredentials
from orchestrator.compaction import LogCompactor
from orchestrator.config import OrchestratorConfig
from orchestrator.db import Database
from orchestrator.effects import Effects
from orchestrator.executor import Executor, host_prefix
from orchestrator.forge_approvals import apply_approval
from orchestrator.grants import GrantSigner
from orchestrator.holds import Holds
from orchestrator.hosts import HostRegistry
from orchestrator.intake import Intake
from orchestrator.integration_inbox import IntegrationInboxes
from orchestrator.logstore import LogStore
from orchestrator.outbox import OutboxRelay
from orchestrator.reaper import Reaper
from orchestrator.retention import RetentionPolicy, RetentionSweeper
from orchestrator.rpc import DatabaseUnavailable, RunnerService
from orchestrator.secretstore import JobSecrets, SecretStore, StaticSecrets, load_keyring
from orchestrator.sessions import LogQuota, Sessions
from orchestrator.store import OUTBOX_CHANNEL, Store
from orchestrator.updates import Hub
from orchestrator.web import LiveSignals, build_app
from orchestrator.webauth import WebPolicy
from protos import admin_pb2_grpc, runner_pb2_grpc

log = logging.getLogger(__name__)

# so_reuseport off: a second server (or process) binding the same port would otherwise share
# its connections, which could put the Admin service behind the Runner port.
GRPC_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024), ("grpc.so_reuseport", 0)]


def advertised(listen: str, port: int, advertise: str | None) -> str:
    """The address runners dial: the configured one, else the listen address with its port."""
    if advertise:
        return advertise
    host = listen.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


class Orchestrator:
    """Start with `await start()`, stop with `await stop()`; `api` is the in-process API.

    Raises ConfigError at construction when no admin token is configured (see `adminauth`)."""

    def __init__(self, config: OrchestratorConfig, *, db: Database, broker: Broker,
                 backend: VMBackend, secrets: Mapping[str, str] | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self.access = resolve_access(config)
        self.config = config
        self.supervisor = supervisor or Supervisor()
        self.db = db
        self.broker = broker
        self.backend = backend
        self.hub = Hub()
        self.sessions = Sessions()
        self.effects = Effects(self.hub, self.sessions)
        self.store = Store(db, config.host_name)
        self.logs = LogStore(db)
        self.intake = Intake(db, self.effects, default_job_timeout=config.default_job_timeout,
                             workflow_limits=config.workflow_limits)
        self.relay = OutboxRelay(db, broker)
        self.effects.outbox_written = self.relay.kick
        self.api = OrchestratorAPI(db=db, intake=self.intake, store=self.store, hub=self.hub,
                                   effects=self.effects)
        # The store always exists (ciadm manages it); jobs take their values from it unless
        # this process was given values of its own (`cidev run --secret`).
        self.secret_store = SecretStore(db, load_keyring(config.secret_keys))
        self.secrets: JobSecrets = (StaticSecrets(secrets) if secrets is not None
                                    else self.secret_store)
        self.holds = Holds(self.logs)
        self.admin_tokens = AdminTokens(db, self.access.token)
        # Signed links to the pages (`web_access = "signed"`): the relay puts them into events.
        self.grants = (GrantSigner(self.access.web_key, config.web_grant_ttl)
                       if self.access.web_key is not None and config.web_access == "signed"
                       else None)
        self.registry = HostRegistry(db, config.host_name, config.capacity,
                                     interval=config.host_heartbeat_interval,
                                     stale_after=config.host_stale_after)
        self.reaper = Reaper(db=db, backend=backend, registry=self.registry,
                             machine_prefix=host_prefix(config.host_name),
                             apply=self.effects.apply, max_retries=config.max_retries,
                             interval=config.reap_interval)
        self._background: list[asyncio.Task[None]] = []
        self.server: grpc.aio.Server | None = None
        self.admin_server: grpc.aio.Server | None = None
        self.blobs: BlobStore | None = None
        self.retention: RetentionSweeper | None = None
        self.artifacts: ArtifactStore | None = None
        self.executor: Executor | None = None
        self._runs: Subscription | None = None
        self.grpc_url = ""
        self.admin_url = ""
        self.web: BackgroundServer | None = None
        # Wakes the web pages' live streams when this host stored a job's log or changed state.
        self.live = LiveSignals()
        self.logs.on_written = self.live.notify
        self.credentials: CheckoutCredentials | None = None

    async def start(self) -> None:
        # Hold the host name and clear up after a previous life before taking any job.
        await self.registry.register()
        await self.reaper.at_start()
        self._background = [
            # The heartbeat ends by itself only when fenced (see `_fenced`).
            self.supervisor.spawn("host-heartbeat", self.registry.run(
                on_fenced=self._fenced, on_drain=self._drain), finite=True),
            self.supervisor.spawn("reaper", self.reaper.run())]
        await self.backend.prepare()
        self.logs.start(self.supervisor.spawn)
        self.blobs = await open_blob_store(
            self.config.blob_store, state_dir=self.config.state_dir,
            multi_host=bool(self.config.database_url and self.config.amqp_url))
        await copy_chunk_rows(self.db, self.blobs)
        self.retention = RetentionSweeper(self.db, self.blobs, RetentionPolicy(
            days=self.config.retention_days,
            default_branch_days=self.config.retention_days_default_branch,
            repositories=self.config.retention_repositories),
            interval=self.config.retention_interval)
        compactor = LogCompactor(self.db, self.blobs, self.logs, self.hub,
                                 interval=self.config.log_compaction_interval)
        self._background += [self.supervisor.spawn("log-compactor", compactor.run()),
                             self.supervisor.spawn("retention-sweeper", self.retention.run())]
        self.artifacts = await ArtifactStore.open(self.db, self.config.host_name, ArtifactLimits(
            file_bytes=self.config.max_artifact_file_bytes,
            job_bytes=self.config.max_artifact_job_bytes,
            concurrency=self.config.artifact_upload_concurrency), self.blobs)
        self.server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=[DatabaseUnavailable()])
        runner_pb2_grpc.add_RunnerServicer_to_server(RunnerService(
            store=self.store, sessions=self.sessions, logs=self.logs, hub=self.hub,
            effects=self.effects, broker=self.broker, artifacts=self.artifacts,
            log_drain_timeout=self.config.log_drain_timeout,
            log_quota=LogQuota(max_bytes=self.config.log_quota_bytes,
                               window=self.config.log_reorder_window),
            holds=self.holds), self.server)
        port = self.server.add_insecure_port(self.config.grpc_listen)
        await self.server.start()
        self.grpc_url = advertised(self.config.grpc_listen, port, self.config.grpc_advertise)
        await self._start_admin()
        listener = await self.db.listen(OUTBOX_CHANNEL, lambda _payload: self.relay.kick())
        self.supervisor.spawn("outbox-listen", listener.run())
        if self.config.web_listen:
            host, _, port = self.config.web_listen.rpartition(":")
            checks = {"database": database_check(self.db.pool),
                      "broker": broker_check(self.broker), "listen": listener.ready,
                      "tasks": self.supervisor.ready}
            self.web = BackgroundServer(build_app(
                self.db, checks, policy=self._web_policy(), public_url=self.config.public_url,
                signals=self.live, extra_routes=[metrics_route(metrics.refreshers(
                    self.db, self.config.host_name, self.config.capacity,
                    lambda: self.executor))], blobs=self.blobs,
                read_artifact=self.artifacts.read if self.artifacts is not None else None,
                rerun=lambda run_id, failed, actor: self.api.rerun(
                    run_id, failed_only=failed, actor=actor)),
                host, int(port))
            self.supervisor.spawn("web-live", self.live.follow(self.hub))
            await self.web.start(self.supervisor)
            self.relay.log_url_base = self.config.public_url or self.web.url
            self.relay.grants = self.grants
        self.relay.start(self.supervisor)
        if self.config.checkout_credentials:
            self.credentials = CheckoutCredentials(self.config.checkout_credentials)
        self.executor = Executor(config=self.config, store=self.store, broker=self.broker,
                                 backend=self.backend, sessions=self.sessions,
                                 effects=self.effects, secrets=self.secrets,
                                 advertise_url=self.grpc_url, supervisor=self.supervisor,
                                 credentials=self.credentials, holds=self.holds,
                                 admin_url=self.admin_url)
        self.executor.drained = self.registry.drained
        await self.executor.start()
        self._runs = await self.broker.consume_runs(self._on_run)
        log.info("orchestrator started", extra={"host": self.config.host_name,
                                                "grpc": self.grpc_url,
                                                "admin": self.admin_url,
                                                "backend": self.backend.name,
                                                "capacity": self.config.capacity})

    def _web_policy(self) -> WebPolicy | None:
        """Who may read the pages (`web_access`); None: everyone."""
        if self.access.web_key is None:
            return None
        return WebPolicy(db=self.db, tokens=self.admin_tokens, key=self.access.web_key,
                         grants=self.grants,
                         secure_cookie=(self.config.public_url or "").startswith("https://"))

    async def _start_admin(self) -> None:
        """The Admin service on its own listener: never the port job machines are given."""
        warn_about(self.config, self.access)
        interceptors: list[grpc.aio.ServerInterceptor] = [DatabaseUnavailable()]
        if self.access.token is not None:
            interceptors.insert(0, AdminTokenRequired(self.admin_tokens.identify))
        self.admin_server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=interceptors)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(
            db=self.db, api=self.api, registry=self.registry, tokens=self.admin_tokens,
            secrets=self.secret_store,
            artifacts=self.artifacts, broker=self.broker, blobs=self.blobs,
            retention=self.retention,
            pages_url=lambda: self.relay.log_url_base, grants=self.grants, holds=self.holds,
            host_name=self.config.host_name,
            integrations=IntegrationInboxes(self.config.checkout_credentials)), self.admin_server)
        try:
            port = self.admin_server.add_insecure_port(self.config.admin_listen)
        except RuntimeError as exc:  # gRPC's way of saying the address is taken or invalid
            raise ConfigError(f"the Admin service cannot listen on {self.config.admin_listen}"
                              f" ({exc})", hint="another orchestrator on this machine? give "
                              "each its own admin_listen (port 0: any free port)") from exc
        await self.admin_server.start()
        self.admin_url = advertised(self.config.admin_listen, port, None)

    async def _on_run(self, delivery: Delivery) -> None:
        message = decode_run_queue(delivery.body)
        if isinstance(message, RunApproval):
            await apply_approval(self.db, self.api, message)
        else:
            await self.intake.accept(message)
        await delivery.ack()

    def _fenced(self) -> None:
        """Another process took this host name over: our leases are void, take no more jobs."""
        if self.executor is not None:
            self._background.append(self.supervisor.spawn(
                "stop-taking", self.executor.stop_taking(), finite=True))

    def _drain(self, drained: bool) -> None:
        """An operator drained (or undrained) this host: see `orchestrator.steering`."""
        if self.executor is not None:
            self._background.append(self.supervisor.spawn(
                "drain", self.executor.drain(drained), finite=True))

    async def stop(self, grace: float = 0.0, *, hand_back: bool = False) -> None:
        """Stop taking work; give running jobs `grace` seconds, then end them (`error`) or,
        with `hand_back` (the drain on SIGTERM), re-queue them for other hosts; close down.

        After a supervised task failed, running jobs are not given `grace`: the host is
        broken (its heartbeat or its log writer may be the part that
        failed) and its jobs are better re-run
        elsewhere now than finished here while the other hosts think it is dead."""
        self.supervisor.stop()
        if self.supervisor.failure is not None:
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
            self.live.close()  # ends the open event streams, else the server waits for them
            await self.web.stop()
        if self.server is not None:
            await self.server.stop(1.0)
        if self.admin_server is not None:
            await self.admin_server.stop(1.0)
        if self.artifacts is not None:
            await self.artifacts.close()
        if self.blobs is not None:
            await self.blobs.close()
        await self.logs.close()
        if self.credentials is not None:
            await self.credentials.aclose()
        await self.backend.close()
        await self.supervisor.close()
        log.info("orchestrator stopped", extra={"host": self.config.host_name})
