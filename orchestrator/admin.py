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

from common.messages import JobState
from orchestrator import admintokens, audit, shells, validate
from orchestrator.adminauth import NO_AUTH_CALLER, caller
from orchestrator.admintokens import AdminTokenInfo, AdminTokens, TokenRefused
from orchestrator.api import JobSummary, OrchestratorAPI, RunSummary
from orchestrator.artifacts import ArtifactStore
from orchestrator.bundle import BundleError, stream_bundle
from orchestrator.db import Database
from orchestrator.grants import GrantSigner, grant_link
from orchestrator.holds import HeldMachine, Holds
from orchestrator.hosts import HostRegistry
from orchestrator.logstore import read_log
from protos import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

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


def _job_message(job: JobSummary, pages: str, link: Callable[[str], str]) -> admin_pb2.Job:
    return admin_pb2.Job(
        job_id=str(job.job_id), key=job.key, runs_on=job.runs_on, state=job.state.value,
        message=job.message, attempt=job.attempt,
        page_url=link(f"{pages}/jobs/{job.job_id}") if pages else "",
        duration_s=job.duration_s if job.duration_s is not None else -1,
        steps=[admin_pb2.Step(index=s.index, name=s.name, state=s.state,
                              exit_code=-1 if s.exit_code is None else s.exit_code,
                              duration_ms=-1 if s.duration_ms is None else s.duration_ms)
               for s in job.steps])


def _token_message(info: AdminTokenInfo) -> admin_pb2.AdminToken:
    return admin_pb2.AdminToken(
        name=info.name, created_unix_ms=_ms(info.created_at), created_by=info.created_by,
        last_used_unix_ms=_ms(info.last_used_at), revoked_unix_ms=_ms(info.revoked_at),
        revoked_by=info.revoked_by or "")


def actor() -> str:
    """Who the current Admin call acts as, for the run and the audit log: `token:NAME`
    (`insecure-no-auth` under the development opt-out, where no token is presented)."""
    name = caller()
    return name if name == NO_AUTH_CALLER else audit.token_actor(name)


# What `RunRef.on_behalf_of` may name: a forge and a login on it.
ON_BEHALF_OF = re.compile(r"[a-z][a-z0-9-]{0,31}:[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, *, db: Database, api: OrchestratorAPI, registry: HostRegistry,
                 tokens: AdminTokens, artifacts: ArtifactStore | None = None,
                 pages_url: Callable[[], str] = lambda: "",
                 grants: GrantSigner | None = None, holds: Holds | None = None,
                 host_name: str = "") -> None:
        self.db = db
        # The machines this host holds, and its name: shells reach only those.
        self.holds = holds if holds is not None else Holds()
        self.host_name = host_name
        self.artifacts = artifacts
        self.api = api
        self.registry = registry
        self.tokens = tokens
        # Signed page links, so that an operator can hand a run's link on.
        self.grants = grants
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

        run = admin_pb2.Run(
            run_id=str(run_id), state=summary.state, message=summary.message,
            workflow_name=summary.workflow_name, repo=f"{repo['owner']}/{repo['name']}",
            commit_sha=row["commit_sha"], ref=row["ref"], event=row["event"],
            trusted=row["trusted"], created_unix_ms=_ms(summary.created_at),
            page_url=link(f"{pages}/runs/{run_id}") if pages else "",
            jobs=[_job_message(j, pages, link) for j in summary.jobs],
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
        return admin_pb2.ListHostsReply(hosts=[
            admin_pb2.Host(name=h.name, capacity=h.capacity, state=h.state, alive=h.alive,
                           active_jobs=h.active_jobs, held_jobs=h.held_jobs,
                           last_heartbeat_unix_ms=_ms(h.last_heartbeat))
            for h in await self.registry.hosts()])

    async def TailLogs(self, request: admin_pb2.TailLogsRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.LogLines]:
        job_id = await self._resolve("jobs", request.job_id, context)
        attempt, last_seq = None, 0
        while True:
            current = await read_log(self.db, job_id)
            if current is not None and current.attempt != attempt:  # a retry starts anew
                attempt, last_seq = current.attempt, 0
            piece = await read_log(self.db, job_id, attempt=attempt, after_seq=last_seq)
            if piece is None:
                return
            for chunk in piece.chunks:
                yield admin_pb2.LogLines(step_index=chunk["step_index"], stream=chunk["stream"],
                                         data=bytes(chunk["data"]))
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

    async def _job_message(self, job_id: uuid.UUID) -> admin_pb2.Job:
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
        return await self._job_message(job_id)

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
        return await self._job_message(job_id)

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
