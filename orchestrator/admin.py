"""The Admin gRPC service (`protos/admin.proto`): what `ciadm` talks to.

Every answer is read from the shared Postgres, so any orchestrator host answers for every run
and job; `TailLogs --follow` polls the stored chunks, so it follows a job running on any host.
Served on the Admin listener only, behind `adminauth.AdminTokenRequired` (every call carries
the admin token); the Runner listener, which job machines reach, does not serve it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from opentelemetry.trace import SpanKind

from common.broker import Broker
from common.messages import JobState
from common.observability import tracer
from orchestrator import admintokens, audit, shells, steering, submit, validate
from orchestrator.adminauth import actor
from orchestrator.admintokens import AdminTokenInfo, AdminTokens, TokenRefused
from orchestrator.api import JobSummary, OrchestratorAPI, RunSummary
from orchestrator.artifact_records import download_path, find_artifact, list_artifacts
from orchestrator.artifacts import ArtifactStore
from orchestrator.blobstore import BlobNotFound, BlobStore, BlobStoreUnavailable
from orchestrator.bundle import BundleError, stream_bundle
from orchestrator.db import Database
from orchestrator.grants import GrantSigner, grant_link
from orchestrator.holds import HeldMachine, Holds
from orchestrator.hosts import HostInfo, HostRegistry
from orchestrator.inboxadmin import InboxAdmin
from orchestrator.integration_inbox import IntegrationInboxes
from orchestrator.logarchive import LogGone, LogUnavailable
from orchestrator.logstore import read_log
from orchestrator.retention import RetentionSweeper
from orchestrator.secretadmin import SecretAdmin
from orchestrator.secretstore import SecretStore
from protos import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

FOLLOW_POLL_SECONDS = 0.3
DEFAULT_AUDIT_LIMIT = 50
# The longest hold an operator may ask for (`ciadm hold --ttl`).
MAX_HOLD_SECONDS = 24 * 3600
HOLDABLE = [s.value for s in JobState if not s.final]
TOKEN_REFUSALS = {admintokens.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
                  admintokens.EXISTS: grpc.StatusCode.ALREADY_EXISTS,
                  admintokens.UNKNOWN: grpc.StatusCode.NOT_FOUND,
                  admintokens.REVOKED: grpc.StatusCode.FAILED_PRECONDITION}


class NotFound(LookupError):
    """No run or job matches the id (or prefix) the caller gave."""


def _ms(value: object) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0  # type: ignore[attr-defined]


def _job_message(job: JobSummary, pages: str, link: Callable[[str], str],
                 earlier: list[admin_pb2.Attempt]) -> admin_pb2.Job:
    return admin_pb2.Job(
        job_id=str(job.job_id), key=job.key, runs_on=job.runs_on, state=job.state.value,
        message=job.message, attempt=job.attempt,
        page_url=link(f"{pages}/jobs/{job.job_id}") if pages else "",
        duration_s=job.duration_s if job.duration_s is not None else -1,
        steps=[admin_pb2.Step(index=s.index, name=s.name, state=s.state,
                              exit_code=-1 if s.exit_code is None else s.exit_code,
                              duration_ms=-1 if s.duration_ms is None else s.duration_ms)
               for s in job.steps],
        earlier_attempts=earlier)


async def _abort_log_unavailable(context: grpc.aio.ServicerContext, exc: LogUnavailable) -> None:
    code = grpc.StatusCode.DATA_LOSS if isinstance(exc, LogGone) else grpc.StatusCode.UNAVAILABLE
    await context.abort(code, f"{exc.message} ({exc.hint})")


def _host_message(host: HostInfo) -> admin_pb2.Host:
    return admin_pb2.Host(name=host.name, capacity=host.capacity, state=host.state,
                          alive=host.alive, active_jobs=host.active_jobs,
                          last_heartbeat_unix_ms=_ms(host.last_heartbeat), drained=host.drained,
                          held_jobs=host.held_jobs)


def _token_message(info: AdminTokenInfo) -> admin_pb2.AdminToken:
    return admin_pb2.AdminToken(
        name=info.name, created_unix_ms=_ms(info.created_at), created_by=info.created_by,
        last_used_unix_ms=_ms(info.last_used_at), revoked_unix_ms=_ms(info.revoked_at),
        revoked_by=info.revoked_by or "")


# What `RunRef.on_behalf_of` may name: a forge and a login on it.
ON_BEHALF_OF = re.compile(r"[a-z][a-z0-9-]{0,31}:[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class AdminService(SecretAdmin, InboxAdmin, admin_pb2_grpc.AdminServicer):
    def __init__(self, *, db: Database, api: OrchestratorAPI, registry: HostRegistry,
                 tokens: AdminTokens, secrets: SecretStore, broker: Broker,
                 artifacts: ArtifactStore | None = None,
                 pages_url: Callable[[], str] = lambda: "",
                 grants: GrantSigner | None = None,
                 blobs: BlobStore | None = None,
                 retention: RetentionSweeper | None = None, holds: Holds | None = None,
                 host_name: str = "",
                 integrations: IntegrationInboxes | None = None) -> None:
        self.db = db
        # The forge integrations' webhook inboxes (ListInbox, RetryInbox).
        self.integrations = integrations if integrations is not None else IntegrationInboxes({})
        self.secrets = secrets
        # The machines this host holds, and its name: shells reach only those.
        self.holds = holds if holds is not None else Holds()
        self.host_name = host_name
        self.artifacts = artifacts
        self.api = api
        self.registry = registry
        self.tokens = tokens
        # Signed page links, so that an operator can hand a run's link on.
        self.grants = grants
        self.broker = broker
        # Where artifacts' bytes are (ReadArtifact); None in a service without artifacts.
        self.blobs = blobs
        # The retention sweeper (Prune); None in a service without a blob store.
        self.retention = retention
        # The web pages' base URL ("" while none are served); asked per call because the
        # pages start after the gRPC server.
        self.pages_url = pages_url

    async def _resolve(self, table: str, ref: str, context: grpc.aio.ServicerContext,
                       action: str | None = None) -> uuid.UUID:
        """The id `ref` names; else the call ends with why (audited when it was `action`)."""
        try:
            ref = validate.id_prefix(f"{table[:-1]} id", ref)
        except validate.InvalidMessage as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), action, ref)
        rows = await self.db.pool.fetch(
            f"SELECT id FROM {table} WHERE id::text LIKE $1 || '%' LIMIT 2", ref)
        if not rows:
            await self._refuse(context, grpc.StatusCode.NOT_FOUND,
                               f"no {table[:-1]} with id {ref}", action, ref)
        if len(rows) > 1:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                               f"{ref} matches more than one {table[:-1]}; give more of the id",
                               action, ref)
        return rows[0]["id"]

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                      message: str, action: str | None, target: str) -> None:
        """End the call with `message`; an administrative `action` is audited as refused."""
        if action is not None:
            await audit.record(self.db.pool, actor=actor(), action=action, target=target,
                               outcome=f"refused: {message}")
        await context.abort(code, message)

    async def _acting(self, request: admin_pb2.RunRef, action: str,
                      context: grpc.aio.ServicerContext) -> str:
        """Who the approve or cancel is recorded as: the caller's token, or the forge user an
        integration acts for (`on_behalf_of`) with the token it used."""
        if not request.on_behalf_of:
            return actor()
        if not ON_BEHALF_OF.fullmatch(request.on_behalf_of):
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                               "on_behalf_of must be FORGE:LOGIN, e.g. github:octocat",
                               action, request.run_id)
        return f"{request.on_behalf_of} via {actor()}"

    async def _run_message(self, run_id: uuid.UUID) -> admin_pb2.Run:
        summary: RunSummary | None = await self.api.summary(run_id)
        row = await self.db.pool.fetchrow(
            "SELECT repo, commit_sha, ref, event, trusted, gate,"
            " manifest -> 'gate' -> 'reasons' AS gate_reasons FROM runs WHERE id = $1", run_id)
        if summary is None or row is None:
            raise NotFound(str(run_id))
        repo = row["repo"]
        pages = self.pages_url().rstrip("/")

        def link(url: str) -> str:
            return grant_link(url, self.grants, run_id)

        earlier: dict[uuid.UUID, list[admin_pb2.Attempt]] = {}
        for attempt in await self.db.pool.fetch(
                "SELECT a.job_id, a.attempt, a.state, a.message, a.host FROM job_attempts a"
                " JOIN jobs j ON j.id = a.job_id WHERE j.run_id = $1 ORDER BY a.id", run_id):
            earlier.setdefault(attempt["job_id"], []).append(admin_pb2.Attempt(
                attempt=attempt["attempt"], state=attempt["state"], message=attempt["message"],
                host=attempt["host"] or ""))
        run = admin_pb2.Run(
            run_id=str(run_id), state=summary.state, message=summary.message,
            workflow_name=summary.workflow_name, repo=f"{repo['owner']}/{repo['name']}",
            commit_sha=row["commit_sha"], ref=row["ref"], event=row["event"],
            trusted=row["trusted"], created_unix_ms=_ms(summary.created_at),
            page_url=link(f"{pages}/runs/{run_id}") if pages else "",
            jobs=[_job_message(j, pages, link, earlier.get(j.job_id, [])) for j in summary.jobs],
            approved_by=summary.approved_by or "", approved_unix_ms=_ms(summary.approved_at),
            cancelled_by=summary.cancelled_by or "", cancelled_unix_ms=_ms(summary.cancelled_at),
            gate=row["gate"] or "", gate_reasons=row["gate_reasons"] or [])
        held = {r["id"]: r for r in await self.db.pool.fetch(
            "SELECT id, held_until, held_host, held_admin FROM jobs"
            " WHERE run_id = $1 AND held_until > now()", run_id)}
        for job in run.jobs:
            hold = held.get(uuid.UUID(job.job_id))
            if hold is not None:
                job.held_until_unix_ms = _ms(hold["held_until"])
                job.held_host = hold["held_host"]
                job.held_admin = hold["held_admin"] or ""
        return run

    async def ListRuns(self, request: admin_pb2.ListRunsRequest,
                       context: grpc.aio.ServicerContext) -> admin_pb2.ListRunsReply:
        await validate.require(context, validate.list_runs_request, request)
        rows = await self.db.pool.fetch(
            "SELECT id FROM runs WHERE ($1 = '' OR state = $1) ORDER BY created_at DESC LIMIT $2",
            request.state, request.limit or 20)
        return admin_pb2.ListRunsReply(runs=[await self._run_message(r["id"]) for r in rows])

    async def GetRun(self, request: admin_pb2.RunRef,
                     context: grpc.aio.ServicerContext) -> admin_pb2.Run:
        return await self._run_message(await self._resolve("runs", request.run_id, context))

    async def _manifest(self, request: admin_pb2.RunRef,
                        context: grpc.aio.ServicerContext) -> tuple[uuid.UUID, dict]:
        run_id = await self._resolve("runs", request.run_id, context)
        manifest = await self.db.pool.fetchval("SELECT manifest FROM runs WHERE id = $1", run_id)
        if manifest is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {run_id} has not ended: its record is written when it does")
        return run_id, manifest

    async def GetManifest(self, request: admin_pb2.RunRef,
                          context: grpc.aio.ServicerContext) -> admin_pb2.ManifestReply:
        _, manifest = await self._manifest(request, context)
        return admin_pb2.ManifestReply(manifest_json=json.dumps(manifest, indent=2))

    async def GetBundle(self, request: admin_pb2.RunRef, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[admin_pb2.BundleChunk]:
        run_id, manifest = await self._manifest(request, context)
        if self.artifacts is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this orchestrator is starting")
        jobs = {r["key"]: r["id"] for r in await self.db.pool.fetch(
            "SELECT key, id FROM jobs WHERE run_id = $1", run_id)}
        try:
            async for data in stream_bundle(manifest, jobs, self.artifacts.read):
                yield admin_pb2.BundleChunk(data=data)
        except BundleError as exc:
            log.error("bundle of run %s cut short: %s", run_id, exc, extra={"run_id": str(run_id)})
            await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))

    async def ApproveRun(self, request: admin_pb2.RunRef,
                         context: grpc.aio.ServicerContext) -> admin_pb2.Run:
        who = await self._acting(request, "approve", context)
        run_id = await self._resolve("runs", request.run_id, context, "approve")
        # A refusal is audited by the store, with the run's state.
        if not await self.api.approve_run(run_id, who):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {run_id} is not waiting for approval")
        log.info("run approved", extra={"run_id": str(run_id), "by": who})
        return await self._run_message(run_id)

    async def CancelRun(self, request: admin_pb2.RunRef,
                        context: grpc.aio.ServicerContext) -> admin_pb2.Run:
        who = await self._acting(request, "cancel", context)
        run_id = await self._resolve("runs", request.run_id, context, "cancel")
        if not await self.api.cancel_run(run_id, f"cancelled by {who}", actor=who):
            summary = await self.api.summary(run_id)
            state = summary.state if summary is not None else "gone"
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {run_id} already ended ({state}); nothing to cancel")
        log.info("run cancelled", extra={"run_id": str(run_id), "by": who})
        return await self._run_message(run_id)

    async def ListHosts(self, request: admin_pb2.ListHostsRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.ListHostsReply:
        return admin_pb2.ListHostsReply(hosts=[_host_message(h)
                                               for h in await self.registry.hosts()])

    async def _resolve_any(self, ref: str, context: grpc.aio.ServicerContext
                           ) -> tuple[str, uuid.UUID]:
        """`("runs", id)` or `("jobs", id)`: what an operator's id names (runs first)."""
        try:
            ref = validate.id_prefix("id", ref)
        except validate.InvalidMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        rows = await self.db.pool.fetch(
            "(SELECT 'runs' AS kind, id FROM runs WHERE id::text LIKE $1 || '%' LIMIT 2)"
            " UNION ALL (SELECT 'jobs', id FROM jobs WHERE id::text LIKE $1 || '%' LIMIT 2)", ref)
        if not rows:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run or job with id {ref}")
        if len(rows) > 1:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{ref} matches more than one run or job; give more of the id")
        return rows[0]["kind"], rows[0]["id"]

    async def TailLogs(self, request: admin_pb2.TailLogsRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.LogLines]:
        kind, found = await self._resolve_any(request.job_id, context)
        if kind == "runs":
            try:
                async for lines in follow_run(self.db, self.blobs, found, follow=request.follow):
                    yield lines
            except LogUnavailable as exc:
                await _abort_log_unavailable(context, exc)
            return
        job_id = found
        attempt, last_seq = None, 0
        while True:
            try:
                current = await read_log(self.db, self.blobs, job_id)
                if current is not None and current.attempt != attempt:  # a retry starts anew
                    attempt, last_seq = current.attempt, 0
                piece = await read_log(self.db, self.blobs, job_id, attempt=attempt,
                                       after_seq=last_seq)
            except LogUnavailable as exc:
                await _abort_log_unavailable(context, exc)
            if piece is None:
                return
            for chunk in piece.chunks:
                yield admin_pb2.LogLines(step_index=chunk.step_index, stream=chunk.stream,
                                         data=chunk.data)
            last_seq = piece.last_seq or last_seq
            if not request.follow or (piece.done and not piece.chunks):
                return
            await asyncio.sleep(FOLLOW_POLL_SECONDS)

    async def CreateAdminToken(self, request: admin_pb2.AdminTokenName,
                               context: grpc.aio.ServicerContext) -> admin_pb2.NewAdminToken:
        try:
            token = await self.tokens.create(request.name, actor())
        except TokenRefused as exc:  # audited by `tokens`
            await context.abort(TOKEN_REFUSALS[exc.reason], str(exc))
        log.info("admin token created", extra={"name": request.name, "by": actor()})
        info = next(t for t in await self.tokens.list() if t.name == request.name)
        return admin_pb2.NewAdminToken(info=_token_message(info), token=token)

    async def ListAdminTokens(self, request: admin_pb2.ListAdminTokensRequest,
                              context: grpc.aio.ServicerContext
                              ) -> admin_pb2.ListAdminTokensReply:
        return admin_pb2.ListAdminTokensReply(
            tokens=[_token_message(t) for t in await self.tokens.list()])

    async def RevokeAdminToken(self, request: admin_pb2.AdminTokenName,
                               context: grpc.aio.ServicerContext) -> admin_pb2.AdminToken:
        try:
            await self.tokens.revoke(request.name, actor())
        except TokenRefused as exc:  # audited by `tokens`
            await context.abort(TOKEN_REFUSALS[exc.reason], str(exc))
        log.info("admin token revoked", extra={"name": request.name, "by": actor()})
        return _token_message(next(t for t in await self.tokens.list()
                                   if t.name == request.name))

    async def ListAudit(self, request: admin_pb2.ListAuditRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.ListAuditReply:
        await validate.require(context, validate.list_audit_request, request)
        entries = await audit.recent(self.db.pool, request.limit or DEFAULT_AUDIT_LIMIT)
        return admin_pb2.ListAuditReply(entries=[
            admin_pb2.AuditEntry(id=e.id, at_unix_ms=_ms(e.at), actor=e.actor, action=e.action,
                                 target=e.target, outcome=e.outcome, detail=e.detail)
            for e in entries])

    async def SubmitRun(self, request: admin_pb2.SubmitRunRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.Run:
        await validate.require(context, submit.run_request, request)
        run_request = submit.run_request(request)
        with _tracer.start_as_current_span("admin.SubmitRun", kind=SpanKind.SERVER, attributes={
                "solstice.request_id": run_request.request_id,
                "solstice.repo": run_request.repo.full_name}):
            try:
                run_id = await submit.submit(self.db, self.broker, run_request)
            except TimeoutError:
                await context.abort(grpc.StatusCode.UNAVAILABLE, (
                    f"request {run_request.request_id} was queued but no orchestrator recorded "
                    f"a run for it within {submit.RECORD_TIMEOUT:g} s; is any consuming runs?"))
        await audit.record(self.db.pool, actor=actor(), action="submit", target=str(run_id),
                           outcome="ok", detail=f"{run_request.repo.full_name} "
                                                f"{run_request.commit_sha}")
        log.info("run submitted", extra={"run_id": str(run_id), "by": actor()})
        return await self._run_message(run_id)

    async def Rerun(self, request: admin_pb2.RerunRequest,
                    context: grpc.aio.ServicerContext) -> admin_pb2.Run:
        kind, found = await self._resolve_any(request.id, context)
        if kind == "jobs" and request.failed_only:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "--failed applies to a run; give the run's id")
        run_id = found if kind == "runs" else await self.db.pool.fetchval(
            "SELECT run_id FROM jobs WHERE id = $1", found)
        if request.hold_seconds > MAX_HOLD_SECONDS:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                               f"hold_seconds must be at most {MAX_HOLD_SECONDS}", "rerun",
                               str(run_id))
        by = actor()
        try:
            keys = await self.api.rerun(run_id, job_id=found if kind == "jobs" else None,
                                        failed_only=request.failed_only,
                                        hold_seconds=request.hold_seconds or None, actor=by)
        except steering.RerunRefused as exc:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc), "rerun",
                               str(run_id))
        log.info("run re-run", extra={"run_id": str(run_id), "jobs": ",".join(keys), "by": by})
        return await self._run_message(run_id)

    async def SetHostDrained(self, request: admin_pb2.SetHostDrainedRequest,
                             context: grpc.aio.ServicerContext) -> admin_pb2.Host:
        action = "drain" if request.drained else "undrain"
        if not await steering.set_drained(self.db, request.host, request.drained):
            await self._refuse(context, grpc.StatusCode.NOT_FOUND, f"no host named "
                               f"{request.host!r} is registered; `ciadm hosts` lists them",
                               action, request.host)
        await audit.record(self.db.pool, actor=actor(), action=action, target=request.host)
        log.info("host drained" if request.drained else "host undrained",
                 extra={"host": request.host})
        return next(_host_message(h) for h in await self.registry.hosts()
                    if h.name == request.host)

    async def GetQueue(self, request: admin_pb2.GetQueueRequest,
                       context: grpc.aio.ServicerContext) -> admin_pb2.GetQueueReply:
        labels = await steering.queue_by_label(self.db, await self.registry.hosts())
        return admin_pb2.GetQueueReply(labels=[
            admin_pb2.LabelQueue(label=q.label, depth=q.depth, oldest_wait_s=q.oldest_wait_s,
                                 hosts=q.hosts, capacity=q.capacity) for q in labels])


    async def ListArtifacts(self, request: admin_pb2.ListArtifactsRequest,
                            context: grpc.aio.ServicerContext) -> admin_pb2.ListArtifactsReply:
        await validate.require(context, validate.list_artifacts_request, request)
        run_id = await self._resolve("runs", request.run_id, context)
        job_id = await self._job_of_run(run_id, request.job, context) if request.job else None
        pages = self.pages_url().rstrip("/")
        return admin_pb2.ListArtifactsReply(artifacts=[
            admin_pb2.Artifact(job_id=str(r.job_id), job_key=r.job_key, attempt=r.attempt,
                               path=r.path, size=r.size, sha256=r.sha256,
                               created_unix_ms=_ms(r.created_at),
                               url=f"{pages}{download_path(r)}" if pages else "")
            for r in await list_artifacts(self.db, run_id, job_id)])

    async def _job_of_run(self, run_id: uuid.UUID, job: str,
                          context: grpc.aio.ServicerContext) -> uuid.UUID:
        """The run's job named by its key, else by its id or an unambiguous prefix of it."""
        rows = await self.db.pool.fetch(
            "SELECT id FROM jobs WHERE run_id = $1 AND key = $2", run_id, job)
        if not rows and validate.ID_PREFIX.match(job.lower()):
            rows = await self.db.pool.fetch(
                "SELECT id FROM jobs WHERE run_id = $1 AND id::text LIKE $2 || '%' LIMIT 2",
                run_id, job.lower())
        if len(rows) != 1:
            keys = [r["key"] for r in await self.db.pool.fetch(
                "SELECT key FROM jobs WHERE run_id = $1 ORDER BY position, key", run_id)]
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"run {run_id} has no job {job!r} (its jobs: {', '.join(keys)})")
        return rows[0]["id"]

    async def ReadArtifact(self, request: admin_pb2.ReadArtifactRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.ArtifactData]:
        await validate.require(context, validate.read_artifact_request, request)
        record = await find_artifact(self.db, uuid.UUID(request.job_id), request.path,
                                     request.attempt or None)
        if record is None or self.blobs is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"job {request.job_id} has no artifact {request.path!r}")
        assert record is not None and self.blobs is not None
        if request.offset > record.size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"offset {request.offset} is past the end of {request.path!r} "
                                f"({record.size} bytes)")
        try:
            async for piece in self.blobs.read(record.store_key, request.offset):
                yield admin_pb2.ArtifactData(data=piece)
        except BlobNotFound:
            log.error("an artifact's blob is missing", extra={"key": record.store_key})
            await context.abort(grpc.StatusCode.DATA_LOSS,
                                f"artifact {request.path!r} is listed but its bytes are gone "
                                "from the blob store")
        except BlobStoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def Prune(self, request: admin_pb2.PruneRequest,
                    context: grpc.aio.ServicerContext) -> admin_pb2.PruneReply:
        if self.retention is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this orchestrator has no blob store, so no retention sweeper")
        assert self.retention is not None
        report = await self.retention.sweep(dry_run=request.dry_run)
        if not report.swept:
            await context.abort(grpc.StatusCode.ABORTED, "another orchestrator host is sweeping "
                                "right now; try again when it is done")
        if not request.dry_run:
            await audit.record(self.db.pool, actor=actor(), action="prune",
                               detail=f"{len(report.runs)} runs, {report.bytes} bytes")
        log.info("retention sweep asked for", extra={
            "by": actor(), "dry_run": request.dry_run,
            "runs": len(report.runs), "bytes": report.bytes})
        return admin_pb2.PruneReply(dry_run=report.dry_run, bytes=report.bytes, runs=[
            admin_pb2.PrunedRun(run_id=str(r.run_id), repository=r.repository, ref=r.ref,
                                finished_unix_ms=_ms(r.finished_at), keep_days=r.keep_days,
                                bytes=r.bytes) for r in report.runs])

    async def _job_reply(self, job_id: uuid.UUID) -> admin_pb2.Job:
        run_id = await self.db.pool.fetchval("SELECT run_id FROM jobs WHERE id = $1", job_id)
        run = await self._run_message(run_id)
        return next(j for j in run.jobs if j.job_id == str(job_id))

    async def HoldJob(self, request: admin_pb2.HoldRequest,
                      context: grpc.aio.ServicerContext) -> admin_pb2.Job:
        job_id = await self._resolve("jobs", request.job_id, context, "hold")
        if not 0 < request.ttl_seconds <= MAX_HOLD_SECONDS:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                               f"ttl_seconds must be from 1 to {MAX_HOLD_SECONDS}", "hold",
                               str(job_id))
        async with self.db.transaction() as conn:
            state = await conn.fetchval(
                "UPDATE jobs SET hold_ttl = $2 WHERE id = $1 AND state = ANY($3)"
                " RETURNING state", job_id, request.ttl_seconds, HOLDABLE)
            if state is None:
                await audit.record(conn, actor=actor(), action="hold", target=str(job_id),
                                   outcome="refused: the job is not running")
            else:
                await audit.record(conn, actor=actor(), action="hold", target=str(job_id),
                                   detail=f"ttl {request.ttl_seconds} s")
        if state is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {job_id} is not queued or running: only a job that has "
                                "not ended can be held when it fails")
        return await self._job_reply(job_id)

    async def ReleaseJob(self, request: admin_pb2.JobRef,
                         context: grpc.aio.ServicerContext) -> admin_pb2.Job:
        job_id = await self._resolve("jobs", request.job_id, context, "release")
        held = self.holds.get(job_id)
        if held is None:
            await self._elsewhere(job_id, context, "release")
            cleared = await self.db.pool.fetchval(
                "UPDATE jobs SET hold_ttl = NULL WHERE id = $1 AND hold_ttl IS NOT NULL"
                " RETURNING id", job_id)
            if cleared is None:
                await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                                   f"job {job_id} is not held", "release", str(job_id))
        else:
            held.release(f"released by {actor()}")
        await audit.record(self.db.pool, actor=actor(), action="release", target=str(job_id))
        return await self._job_reply(job_id)

    async def _elsewhere(self, job_id: uuid.UUID, context: grpc.aio.ServicerContext,
                         action: str) -> None:
        """End the call if another host holds the job: name its Admin address."""
        row = await self.db.pool.fetchrow(
            "SELECT held_host, held_admin FROM jobs WHERE id = $1 AND held_until > now()"
            " AND held_host <> $2", job_id, self.host_name)
        if row is not None:
            await self._refuse(
                context, grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job_id} is held by host {row['held_host']}; orchestrators do not relay "
                f"to each other: run ciadm --orchestrator {row['held_admin']} {action} ...",
                action, str(job_id))

    async def Shell(self, request_iterator: AsyncIterator[admin_pb2.ShellInput],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.ShellOutput]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "a Shell stream starts with `open`")
        assert first is not None
        action = "exec" if first.open.command else "shell"
        job_id = await self._resolve("jobs", first.open.job_id, context, action)
        held = self.holds.get(job_id)
        if held is None:
            await self._elsewhere(job_id, context, action)
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                               f"job {job_id}'s machine is not held (only a failed job with "
                               "hold_on_failure, or `ciadm hold` while it ran, is)", action,
                               str(job_id))
        assert held is not None
        who = actor()
        await audit.record(self.db.pool, actor=who, action=action, target=str(job_id),
                           detail=f"opened: {first.open.command}" if first.open.command
                           else "opened")
        log.info("debug session opened", extra={"job_id": str(job_id), "by": who,
                                                "kind": action})
        recording = first.open.record and self.holds.logs is not None
        record = shells.SessionRecord(exit_code=shells.ENDED_BY_HOLD, seconds=0.0,
                                      output_bytes=0,
                                      kept=bytearray() if recording else None)
        try:
            async for output in shells.relay(held, first.open, request_iterator, record):
                yield output
        except LookupError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        finally:
            # Shielded: a client that leaves cancels this call, not the session's record.
            await asyncio.shield(self._session_ended(held, who, action, record, recording))
        yield admin_pb2.ShellOutput(exit_code=record.exit_code)

    async def _session_ended(self, held: HeldMachine, who: str, action: str,
                             record: shells.SessionRecord, recording: bool) -> None:
        await audit.record(self.db.pool, actor=who, action=action, target=str(held.job_id),
                           detail=f"closed after {record.seconds:.1f} s, exit "
                                  f"{record.exit_code}, {record.output_bytes} bytes out"
                                  + (", recorded in the job's log" if recording else ""))
        if recording and self.holds.logs is not None:
            await shells.write_to_log(self.holds.logs, held, who, action, record)


async def follow_run(db: Database, blobs: BlobStore | None, run_id: uuid.UUID, *, follow: bool
                     ) -> AsyncIterator[admin_pb2.LogLines]:
    """Every job's stored log lines of a run, each with its job key; with `follow`, new lines
    (of new attempts too) until the run ended and nothing more arrived."""
    seen: dict[uuid.UUID, tuple[int, int]] = {}  # job -> (attempt, last seq)
    while True:
        run_done = await db.pool.fetchval("SELECT finished_at IS NOT NULL FROM runs WHERE id = $1",
                                          run_id)
        jobs = await db.pool.fetch("SELECT id, key FROM jobs WHERE run_id = $1"
                                   " ORDER BY position, key", run_id)
        sent = False
        for job in jobs:
            attempt, last_seq = seen.get(job["id"], (-1, 0))
            piece = await read_log(db, blobs, job["id"])
            if piece is None:
                continue
            if piece.attempt != attempt:  # a new attempt starts anew
                attempt, last_seq = piece.attempt, 0
            piece = await read_log(db, blobs, job["id"], attempt=attempt, after_seq=last_seq)
            if piece is None:
                continue
            for chunk in piece.chunks:
                sent = True
                yield admin_pb2.LogLines(step_index=chunk.step_index, stream=chunk.stream,
                                         data=chunk.data, job_key=job["key"])
            seen[job["id"]] = (attempt, piece.last_seq or last_seq)
        if not follow or (run_done and not sent):
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
