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
import uuid
from collections.abc import AsyncIterator, Callable

import grpc

from orchestrator import validate
from orchestrator.api import JobSummary, OrchestratorAPI, RunSummary
from orchestrator.artifact_records import download_path, find_artifact, list_artifacts
from orchestrator.artifacts import ArtifactStore
from orchestrator.blobstore import BlobNotFound, BlobStore, BlobStoreUnavailable
from orchestrator.bundle import BundleError, stream_bundle
from orchestrator.db import Database
from orchestrator.hosts import HostRegistry
from orchestrator.logarchive import LogGone, LogUnavailable
from orchestrator.logstore import read_log
from orchestrator.retention import RetentionSweeper
from protos import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 0.3


class NotFound(LookupError):
    """No run or job matches the id (or prefix) the caller gave."""


def _ms(value: object) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0  # type: ignore[attr-defined]


def _job_message(job: JobSummary, pages: str) -> admin_pb2.Job:
    return admin_pb2.Job(
        job_id=str(job.job_id), key=job.key, runs_on=job.runs_on, state=job.state.value,
        message=job.message, attempt=job.attempt,
        page_url=f"{pages}/jobs/{job.job_id}" if pages else "",
        duration_s=job.duration_s if job.duration_s is not None else -1,
        steps=[admin_pb2.Step(index=s.index, name=s.name, state=s.state,
                              exit_code=-1 if s.exit_code is None else s.exit_code,
                              duration_ms=-1 if s.duration_ms is None else s.duration_ms)
               for s in job.steps])


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, *, db: Database, api: OrchestratorAPI, registry: HostRegistry,
                 artifacts: ArtifactStore | None = None,
                 pages_url: Callable[[], str] = lambda: "",
                 blobs: BlobStore | None = None,
                 retention: RetentionSweeper | None = None) -> None:
        self.db = db
        self.artifacts = artifacts
        self.api = api
        self.registry = registry
        # Where artifacts' bytes are (ReadArtifact); None in a service without artifacts.
        self.blobs = blobs
        # The retention sweeper (Prune); None in a service without a blob store.
        self.retention = retention
        # The web pages' base URL ("" while none are served); asked per call because the
        # pages start after the gRPC server.
        self.pages_url = pages_url

    async def _resolve(self, table: str, ref: str, context: grpc.aio.ServicerContext) -> uuid.UUID:
        try:
            ref = validate.id_prefix(f"{table[:-1]} id", ref)
        except validate.InvalidMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        rows = await self.db.pool.fetch(
            f"SELECT id FROM {table} WHERE id::text LIKE $1 || '%' LIMIT 2", ref)
        if not rows:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no {table[:-1]} with id {ref}")
        if len(rows) > 1:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{ref} matches more than one {table[:-1]}; give more of the id")
        return rows[0]["id"]

    async def _run_message(self, run_id: uuid.UUID) -> admin_pb2.Run:
        summary: RunSummary | None = await self.api.summary(run_id)
        row = await self.db.pool.fetchrow(
            "SELECT repo, commit_sha, ref, event, trusted, gate,"
            " manifest -> 'gate' -> 'reasons' AS gate_reasons FROM runs WHERE id = $1", run_id)
        if summary is None or row is None:
            raise NotFound(str(run_id))
        repo = row["repo"]
        pages = self.pages_url().rstrip("/")
        return admin_pb2.Run(
            run_id=str(run_id), state=summary.state, message=summary.message,
            workflow_name=summary.workflow_name, repo=f"{repo['owner']}/{repo['name']}",
            commit_sha=row["commit_sha"], ref=row["ref"], event=row["event"],
            trusted=row["trusted"], created_unix_ms=_ms(summary.created_at),
            page_url=f"{pages}/runs/{run_id}" if pages else "",
            jobs=[_job_message(j, pages) for j in summary.jobs],
            gate=row["gate"] or "", gate_reasons=row["gate_reasons"] or [])

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
        run_id = await self._resolve("runs", request.run_id, context)
        approver = context.peer() or "ciadm"
        if not await self.api.approve_run(run_id, approver):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {run_id} is not waiting for approval")
        log.info("run approved", extra={"run_id": str(run_id), "by": approver})
        return await self._run_message(run_id)

    async def CancelRun(self, request: admin_pb2.RunRef,
                        context: grpc.aio.ServicerContext) -> admin_pb2.Run:
        run_id = await self._resolve("runs", request.run_id, context)
        summary = await self.api.summary(run_id)
        if summary is not None and summary.final:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {run_id} already ended ({summary.state}); nothing to cancel")
        await self.api.cancel_run(run_id, "cancelled by an operator")
        log.info("run cancelled", extra={"run_id": str(run_id)})
        return await self._run_message(run_id)

    async def ListHosts(self, request: admin_pb2.ListHostsRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.ListHostsReply:
        return admin_pb2.ListHostsReply(hosts=[
            admin_pb2.Host(name=h.name, capacity=h.capacity, state=h.state, alive=h.alive,
                           active_jobs=h.active_jobs,
                           last_heartbeat_unix_ms=_ms(h.last_heartbeat))
            for h in await self.registry.hosts()])

    async def TailLogs(self, request: admin_pb2.TailLogsRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.LogLines]:
        job_id = await self._resolve("jobs", request.job_id, context)
        attempt, last_seq = None, 0
        while True:
            try:
                current = await read_log(self.db, self.blobs, job_id)
                if current is not None and current.attempt != attempt:  # a retry starts anew
                    attempt, last_seq = current.attempt, 0
                piece = await read_log(self.db, self.blobs, job_id, attempt=attempt,
                                       after_seq=last_seq)
            except LogUnavailable as exc:
                code = grpc.StatusCode.DATA_LOSS if isinstance(exc, LogGone) else \
                    grpc.StatusCode.UNAVAILABLE
                await context.abort(code, f"{exc.message} ({exc.hint})")
            if piece is None:
                return
            for chunk in piece.chunks:
                yield admin_pb2.LogLines(step_index=chunk.step_index, stream=chunk.stream,
                                         data=chunk.data)
            last_seq = piece.last_seq or last_seq
            if not request.follow or (piece.done and not piece.chunks):
                return
            await asyncio.sleep(FOLLOW_POLL_SECONDS)

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
        log.info("retention sweep asked for", extra={
            "by": context.peer() or "ciadm", "dry_run": request.dry_run,
            "runs": len(report.runs), "bytes": report.bytes})
        return admin_pb2.PruneReply(dry_run=report.dry_run, bytes=report.bytes, runs=[
            admin_pb2.PrunedRun(run_id=str(r.run_id), repository=r.repository, ref=r.ref,
                                finished_unix_ms=_ms(r.finished_at), keep_days=r.keep_days,
                                bytes=r.bytes) for r in report.runs])
