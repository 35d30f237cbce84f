"""Job execution on this host: take JobRequests per label, lease, run the machine, supervise.

For each label the host serves, a `LabelWorker` consumes JobRequests with prefetch = capacity
and never runs more than `capacity` jobs. A delivery is acked right after the job's lease
committed: from then on Postgres (the lease and its renewals) is the truth, so a job may run
for hours without holding an unacked message past RabbitMQ's `consumer_timeout`. Because acked
jobs no longer count against prefetch, a full worker pauses its subscription and resumes when a
slot frees.

A leased job: mint a one-time token (only its hash is stored), provision and start the machine
with the runner bootstrap, then wait for the first of: the runner's result, the boot timeout,
silence past the heartbeat timeout, the machine stopping by itself, the job timeout (+ grace),
a cancel not honoured within its grace, or the lease lost to another host. Whatever happened,
the machine is destroyed (shielded from cancellation) before the result is recorded, except
for a failed job that asked to be held (`hold_on_failure`, `ciadm hold`): its result is
recorded first, then its machine and label slot stay taken until the hold ends (see
orchestrator/holds.py).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from common.broker import Broker, Delivery, Subscription
from common.masking import SecretMasker
from common.messages import JobRequest, JobState, decode
from common.metrics import BOOT_DURATION, JOB_DURATION, JOBS_FINISHED, PROVISION_DURATION
from common.observability import log_context, tracer
from common.retry import Backoff, retry_async
from common.supervise import Supervisor, wait_event
from common.tracing import current_traceparent
from orchestrator import tokens
from orchestrator.backends.base import (
    VM,
    BackendError,
    Resources,
    RunnerBootstrap,
    VMBackend,
    VMSpec,
)
from orchestrator.checkout_credentials import CheckoutCredentials, CredentialUnavailable
from orchestrator.config import OrchestratorConfig
from orchestrator.db import TRANSIENT_ERRORS
from orchestrator.effects import Effects
from orchestrator.holds import WARNING_BEFORE, HeldMachine, Holds
from orchestrator.secretstore import JobSecrets, RunContext, SecretsUnavailable
from orchestrator.sessions import JobSession, Sessions
from orchestrator.store import Lease, Store, hand_back

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

# How often the supervisor re-checks its clocks when nothing else wakes it.
SUPERVISE_TICK = 1.0
CONSOLE_TAIL_LINES = 10
Outcome = tuple[JobState, str]
T = TypeVar("T")


class LeaseLost(Exception):
    """Another host owns the job now; this host must stop writing about it."""


async def _persisting(call: Callable[[], Awaitable[T]], describe: str) -> T:
    """`call()`, retried through a database restart (about a minute): a job's own writes and
    reads must not turn a dropped connection into an errored job."""
    return await retry_async(call, retry_on=TRANSIENT_ERRORS, attempts=30,
                             backoff=Backoff(initial=0.2, maximum=5), describe=describe)


def host_prefix(host_name: str) -> str:
    """`solstice-<host>`: names this host's machines so its reaper finds only its own."""
    return "solstice-" + (re.sub(r"[^a-z0-9]+", "-", host_name.lower()).strip("-") or "host")


class LabelWorker:
    """Consumes one label's queue, keeping at most `capacity` jobs running."""

    def __init__(self, label: str, capacity: int, broker: Broker,
                 take: Callable[[Delivery, Callable[[], None]], Awaitable[bool]],
                 supervisor: Supervisor) -> None:
        self.label = label
        self.capacity = capacity
        self.broker = broker
        self._take = take
        self._supervisor = supervisor
        self.active = 0
        self._subscription: Subscription | None = None
        self._running = False
        self._changed = asyncio.Event()
        self._control: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        await self._sync()
        self._control = self._supervisor.spawn(f"worker-{self.label}", self._loop())

    async def stop(self) -> None:
        """Stop taking jobs (running ones go on)."""
        self._running = False
        if self._control is not None:
            self._control.cancel()
            await asyncio.gather(self._control, return_exceptions=True)
        await self._sync()

    async def _loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self._sync()

    async def _sync(self) -> None:
        """Subscribed exactly while running with a free slot."""
        want = self._running and self.active < self.capacity
        if want and self._subscription is None:
            self._subscription = await self.broker.consume_jobs(
                self.label, self._handle, prefetch=self.capacity)
        elif not want and self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.cancel()

    def _release(self) -> None:
        self.active -= 1
        self._changed.set()

    async def _handle(self, delivery: Delivery) -> None:
        if not self._running or self.active >= self.capacity:
            await delivery.requeue()
            self._changed.set()
            return
        self.active += 1
        if self.active >= self.capacity:
            self._changed.set()
        started = False
        try:
            started = await self._take(delivery, self._release)
        finally:
            if not started:
                self._release()


class Executor:
    """Runs this host's share of the jobs; see the module docstring."""

    def __init__(self, *, config: OrchestratorConfig, store: Store, broker: Broker,
                 backend: VMBackend, sessions: Sessions, effects: Effects,
                 secrets: JobSecrets, advertise_url: str,
                 supervisor: Supervisor, credentials: CheckoutCredentials | None = None,
                 holds: Holds | None = None, admin_url: str = "") -> None:
        self.config = config
        self.store = store
        self.broker = broker
        self.backend = backend
        self.sessions = sessions
        self.effects = effects
        self.secrets = secrets
        self.credentials = credentials
        self.advertise_url = advertise_url
        self.supervisor = supervisor
        self.prefix = host_prefix(config.host_name)
        self.workers = [LabelWorker(label, slots, broker, self._take, supervisor)
                        for label, slots in config.capacity.items()]
        self._jobs: set[asyncio.Task[None]] = set()
        self._hand_back = False
        # `ciadm drain`: take no new jobs while set (the running ones go on).
        self.drained = False
        self.holds = holds if holds is not None else Holds()
        self.admin_url = admin_url
        self._holding: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        if self.drained:
            return
        for worker in self.workers:
            await worker.start()

    async def drain(self, drained: bool) -> None:
        """Stop taking jobs (running ones go on), or take them again."""
        self.drained = drained
        for worker in self.workers:
            await (worker.stop() if drained else worker.start())

    async def stop_taking(self) -> None:
        """Stop consuming job requests; running jobs go on."""
        for worker in self.workers:
            await worker.stop()

    async def stop(self, grace: float = 0.0, *, hand_back: bool = False) -> None:
        """Stop taking jobs; give running ones `grace` seconds, then end them `error` (or,
        with `hand_back`, re-queue them for another host: the drain on SIGTERM)."""
        await self.stop_taking()
        # Held machines are not running jobs: they go at once, before the grace.
        self._stopping = True
        self.holds.release_all(f"host {self.config.host_name} is stopping")
        await asyncio.gather(*self._holding, return_exceptions=True)
        if self._jobs and grace > 0:
            await asyncio.wait(set(self._jobs), timeout=grace)
        self._hand_back = hand_back
        for task in set(self._jobs):
            task.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    @property
    def running(self) -> int:
        return len(self._jobs)

    def active_by_label(self) -> dict[str, int]:
        """Jobs this host runs now, per label (`solstice_host_running_jobs`)."""
        return {worker.label: worker.active for worker in self.workers}

    async def _take(self, delivery: Delivery, release: Callable[[], None]) -> bool:
        """Lease the job of `delivery` and start it; False if there is nothing to run."""
        request = decode(delivery.body, JobRequest)
        token, token_hash = tokens.mint()
        with _tracer.start_as_current_span("job.lease", attributes={
                "solstice.job_id": str(request.job_id), "solstice.attempt": request.attempt}):
            lease, changes = await self.store.lease(
                request.job_id, ttl=self.config.lease_ttl, token_hash=token_hash,
                token_ttl=self.config.boot_timeout)
        await delivery.ack()
        self.effects.apply(changes)
        if lease is None:
            log.info("job request for a job not queued here; ignored",
                     extra={"job_id": str(request.job_id), "redelivered": delivery.redelivered})
            return False
        # A job's task ends by itself; an exception escaping it (its result not recorded)
        # fails the host, whose restart hands the job back.
        task = self.supervisor.spawn(f"job-{lease.key}", self._run(lease, token_hash, token),
                                     finite=True)
        self._jobs.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._jobs.discard(finished)
            release()

        task.add_done_callback(done)
        return True

    async def _job_secrets(self, lease: Lease) -> tuple[dict[str, str], Outcome | None]:
        """The secret values the job lists (none in an untrusted run), or the outcome to end
        it with before any machine exists."""
        if not lease.trusted:
            return {}, None
        run = RunContext(repo=lease.repo, event=lease.event, branch=lease.branch, trusted=True)
        try:
            return await _persisting(
                lambda: self.secrets.for_job(lease.spec.get("secrets", []), run),
                "reading the job's secrets"), None
        except SecretsUnavailable as exc:
            log.warning("job's secrets unavailable", extra={"job_id": str(lease.job_id),
                                                            "reason": exc.message})
            state = JobState.ERROR if exc.infrastructure else JobState.FAILURE
            return {}, (state, str(exc))

    async def _run(self, lease: Lease, token_hash: bytes, token: str) -> None:
        with log_context(run_id=str(lease.run_id), job_id=str(lease.job_id)):
            await self._run_job(lease, token_hash, token)

    async def _run_job(self, lease: Lease, token_hash: bytes, token: str) -> None:
        secrets, problem = await self._job_secrets(lease)
        preloaded = (lease.repo.forge == "local" and self.backend.name == "local"
                     and bool(lease.repo.clone_url))  # none: a job with no source (selftest)
        session = JobSession(
            job_id=lease.job_id, run_id=lease.run_id, key=lease.key, attempt=lease.attempt,
            token_hash=token_hash, spec=lease.spec, repo=lease.repo,
            commit_sha=lease.commit_sha, ref=lease.ref, secrets=secrets, preloaded=preloaded,
            masker=SecretMasker(secrets.values(), verbatim=[token]))
        self.sessions.add(session)
        name = f"{self.prefix}-{lease.job_id.hex[:12]}-{lease.attempt}"
        metric_labels = (lease.runs_on, self.backend.name)
        leased = time.monotonic()
        vm: VM | None = None
        outcome: Outcome | None = None
        with _tracer.start_as_current_span(
                "job", attributes={"job.id": str(lease.job_id), "job.key": lease.key,
                                   "job.attempt": lease.attempt, "solstice.run_id": str(lease.run_id),
                                   "solstice.label": lease.runs_on,
                                   "solstice.backend": self.backend.name}):
            session.traceparent = current_traceparent()
            try:
                if problem is not None:
                    outcome = problem
                elif (refused := await self._checkout_credential(lease, session, token)):
                    outcome = (JobState.ERROR, refused)
                else:
                    resources = lease.spec.get("resources", {})
                    spec = VMSpec(
                        name=name, job_id=str(lease.job_id), label=lease.runs_on,
                        image=lease.runs_on,
                        resources=Resources(**{k: v for k, v in resources.items() if v}),
                        source_dir=Path(lease.repo.clone_url.removeprefix("file://"))
                        if preloaded else None)
                    with _tracer.start_as_current_span("job.provision"):
                        began = time.monotonic()
                        vm = await self._keeping_lease(lease, session, self.backend.provision(spec))
                        PROVISION_DURATION.labels(*metric_labels).observe(time.monotonic() - began)
                    image = vm.details.get("image", spec.image)
                    await _persisting(lambda: self.store.record_machine(
                        lease.job_id, lease.attempt, vm.backend, image), "recording the job's machine")
                    # Boot: from starting the machine to the runner's GetJob (or the end).
                    boot, booting = _tracer.start_span("job.boot"), time.time_ns()
                    try:
                        await self._keeping_lease(lease, session, self.backend.start(
                            vm, RunnerBootstrap(orchestrator_url=self.advertise_url,
                                                job_id=str(lease.job_id), token=token)))
                        outcome = await self._supervise(lease, session, vm)
                    finally:
                        boot.end(session.started_unix_ns)
                        if session.started_unix_ns is not None:
                            BOOT_DURATION.labels(*metric_labels).observe(
                                (session.started_unix_ns - booting) / 1e9)
            except BackendError as exc:
                outcome = (JobState.ERROR, f"infrastructure fault: {exc.message}")
            except LeaseLost:
                log.warning("lease lost; another host owns the job now",
                            extra={"job_id": str(lease.job_id), "attempt": lease.attempt})
            except asyncio.CancelledError:
                if not self._hand_back:
                    outcome = (JobState.ERROR, "the orchestrator stopped while the job was running")
                raise
            except Exception as exc:
                log.exception("job supervision failed", extra={"job_id": str(lease.job_id)})
                outcome = (JobState.ERROR, f"orchestrator fault: {exc}")
            finally:
                await asyncio.shield(self._end(lease, session, name, vm, outcome))
                if outcome is not None:
                    JOB_DURATION.labels(*metric_labels).observe(time.monotonic() - leased)
                    JOBS_FINISHED.labels(outcome[0].value, lease.runs_on).inc()

    async def _checkout_credential(self, lease: Lease, session: JobSession,
                                   token: str) -> str | None:
        """Put the job's checkout credential, if its forge gives one, into its session and its
        masker; the reason the job cannot start when it cannot be had."""
        if self.credentials is None or session.preloaded:
            return None
        try:
            credential = await self.credentials.for_job(lease.repo, lease.job_id)
        except CredentialUnavailable as exc:
            return f"infrastructure fault: {exc}"
        if credential is not None:
            session.checkout = credential
            session.masker = SecretMasker([*session.secrets.values(), credential.password],
                                          verbatim=[token])
        return None

    async def _end(self, lease: Lease, session: JobSession, name: str, vm: VM | None,
                   outcome: Outcome | None) -> None:
        """Kill the token, destroy the machine, then record the result and release dependents.
        A failed job to be held: record first, hold, then kill the token and destroy."""
        ttl = await self._hold_ttl(lease, session, vm, outcome)
        if ttl:
            assert outcome is not None
            await self._hold(lease, session, ttl, outcome)
        elif not session.hold.done():
            session.hold.set_result(0)
        self.sessions.remove(session)
        try:
            if vm is not None:
                await self.backend.destroy(vm)
            else:
                await self.backend.destroy_by_name(name)
        except Exception:
            log.exception("destroying the job's machine failed; the reaper will retry",
                          extra={"machine": name})
        if self.credentials is not None and session.checkout is not None:
            # Nothing of the job runs any more: its checkout credential is of no use now.
            await self.credentials.revoke(lease.repo, lease.job_id, session.checkout)
        if ttl:
            return
        await self._record(lease, outcome)

    async def _record(self, lease: Lease, outcome: Outcome | None) -> None:
        if outcome is None:
            if self._hand_back:
                _, changes = await hand_back(
                    self.store.db, lease.job_id, lease.attempt, self.config.host_name,
                    f"host {self.config.host_name} shut down before the job ended",
                    max_retries=self.config.max_retries)
                self.effects.apply(changes)
            return
        state, message = outcome
        # A database restart must not lose a result the runner delivered.
        changes = await _persisting(
            lambda: self.store.finish(lease.job_id, lease.attempt, state, message),
            "recording the job's result")
        if changes is None:
            log.warning("result refused: the attempt is no longer this host's",
                        extra={"job_id": str(lease.job_id), "attempt": lease.attempt})
            return
        self.effects.apply(changes)
        log.info("job finished", extra={"job_id": str(lease.job_id), "key": lease.key,
                                        "state": state.value})

    async def _hold_ttl(self, lease: Lease, session: JobSession, vm: VM | None,
                        outcome: Outcome | None) -> int:
        """Seconds to hold the machine of a job that failed and asked for it; 0: not held."""
        if (vm is None or outcome is None or outcome[0] != JobState.FAILURE
                or not session.result.done() or self._stopping):
            return 0
        try:
            asked = await self.store.db.pool.fetchval(
                "SELECT hold_ttl FROM jobs WHERE id = $1", lease.job_id)
        except TRANSIENT_ERRORS as exc:
            log.warning("not holding the machine: the database is unavailable",
                        extra={"job_id": str(lease.job_id), "error": repr(exc)})
            return 0
        ttl = asked or lease.spec.get("hold_on_failure") or 0
        if ttl and len(self.holds) >= self.config.max_held:
            log.warning("not holding the failed job's machine: this host already holds "
                        "max_held=%d machines", self.config.max_held,
                        extra={"job_id": str(lease.job_id), "key": lease.key})
            return 0
        return ttl

    async def _hold(self, lease: Lease, session: JobSession, ttl: int, outcome: Outcome) -> None:
        """Record the result, then keep the machine until the hold ends."""
        until = datetime.now(UTC) + timedelta(seconds=ttl)
        held = HeldMachine(session=session, until=until, deadline=time.monotonic() + ttl)
        # Marked held before the result is recorded: the reaper spares held machines only.
        await self.store.db.pool.execute(
            "UPDATE jobs SET held_until = $2, held_host = $3, held_admin = $4 WHERE id = $1",
            lease.job_id, until, self.config.host_name, self.admin_url)
        self.holds.add(held)
        task = asyncio.current_task()
        assert task is not None
        self._holding.add(task)
        session.hold.set_result(ttl)
        log.info("holding the failed job's machine", extra={
            "job_id": str(lease.job_id), "key": lease.key, "until": until.isoformat()})
        try:
            await self._record(lease, outcome)
            reason = await self._held(held)
            log.info("hold ended", extra={"job_id": str(lease.job_id), "reason": reason})
            held.end(reason)
        finally:
            self._holding.discard(task)
            self.holds.remove(held)
            await self.store.db.pool.execute(
                "UPDATE jobs SET held_until = NULL, held_host = NULL, held_admin = NULL,"
                " hold_ttl = NULL WHERE id = $1", lease.job_id)

    async def _held(self, held: HeldMachine) -> str:
        """Wait for the end of the hold, warning open sessions before the TTL; why it ended."""
        warned = False
        while True:
            remaining = held.remaining()
            if remaining <= 0:
                return "its time ran out"
            if not warned and remaining <= WARNING_BEFORE:
                warned = True
                held.notify(held.warning())
            silent = time.monotonic() - held.session.last_seen
            if silent > self.config.heartbeat_timeout:
                return f"the runner stopped responding ({silent:.0f} s)"
            wake = remaining - WARNING_BEFORE if not warned else remaining
            if await wait_event(held.released, min(max(wake, 0.01), SUPERVISE_TICK)):
                return held.reason

    async def _supervise(self, lease: Lease, session: JobSession, vm: VM) -> Outcome:
        loop = asyncio.get_running_loop()
        config = self.config
        boot_deadline = loop.time() + config.boot_timeout
        next_renewal = loop.time() + config.lease_ttl / 3
        exited = asyncio.ensure_future(self.backend.wait_exit(vm))
        cancelled = asyncio.ensure_future(session.cancel.wait())
        started = asyncio.ensure_future(session.started.wait())
        try:
            while True:
                if session.result.done():
                    return session.result.result()
                now = loop.time()
                if exited.done():
                    await asyncio.sleep(0)  # a result sent just before the exit is processed
                    if session.result.done():
                        return session.result.result()
                    return JobState.ERROR, await self._died(vm, session, exited.result())
                if not session.started.is_set():
                    if now > boot_deadline:
                        return JobState.ERROR, (f"the runner did not call in within "
                                                f"{config.boot_timeout:g} s of the machine start")
                else:
                    silent = time.monotonic() - session.last_seen
                    if silent > config.heartbeat_timeout:
                        return JobState.ERROR, (f"the runner stopped responding (nothing heard "
                                                f"for {silent:.0f} s)")
                    limit = lease.spec["timeout"] + config.timeout_grace
                    if time.monotonic() - session.started_at > limit:
                        return JobState.TIMED_OUT, (f"job exceeded its timeout of "
                                                    f"{lease.spec['timeout']} s")
                # A runner that has not called in yet has nothing to stop: end at once.
                if session.cancel.is_set() and (
                        not session.started.is_set()
                        or time.monotonic() - session.cancel_at > config.cancel_grace):
                    return JobState.CANCELLED, session.cancel_reason
                if now >= next_renewal:
                    renewed = await self._renew_lease(lease, session)
                    next_renewal = now + (config.lease_ttl / 3 if renewed else SUPERVISE_TICK)
                wake = {session.result, exited}
                if not cancelled.done():
                    wake.add(cancelled)
                if not started.done():
                    wake.add(started)
                await asyncio.wait(wake, timeout=SUPERVISE_TICK,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (exited, cancelled, started):
                waiter.cancel()

    async def _renew_lease(self, lease: Lease, session: JobSession) -> bool:
        """Extend the lease; False if the database did not answer (the lease has two thirds
        of its life left: try again shortly). `LeaseLost` when another host owns the job now;
        a cancel asked meanwhile is passed to the session."""
        try:
            cancel = await self.store.renew_lease(lease.job_id, lease.attempt,
                                                  self.config.lease_ttl)
        except TRANSIENT_ERRORS as exc:
            log.warning("lease renewal failed; retrying",
                        extra={"job_id": str(lease.job_id), "error": repr(exc)})
            return False
        if cancel is None:
            raise LeaseLost()
        if cancel:
            session.request_cancel("cancelled")
        return True

    async def _keeping_lease(self, lease: Lease, session: JobSession, work: Awaitable[T]) -> T:
        """Await a backend's `work`, renewing the lease meanwhile: provisioning a machine (a
        bhyve install, a boot) may outlast `lease_ttl`, and an expired lease would let a
        reaper hand the job to another host while this one still builds its machine."""
        task = asyncio.ensure_future(work)
        interval = self.config.lease_ttl / 3
        try:
            while not (await asyncio.wait({task}, timeout=interval))[0]:
                renewed = await self._renew_lease(lease, session)
                interval = self.config.lease_ttl / 3 if renewed else SUPERVISE_TICK
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _died(self, vm: VM, session: JobSession, reason: str) -> str:
        """The message for a machine that stopped before its runner reported a result."""
        console = session.masker.mask_text(await self.backend.console_log(vm)).strip().splitlines()
        tail = "\n".join(console[-CONSOLE_TAIL_LINES:])
        message = f"{reason} before reporting a result"
        return f"{message}; last console lines:\n{tail}" if tail else message

