"""The control stream: a ping every few seconds, a `Control` back; `CANCEL` stops the job.

The orchestrator may send a `Control` at any time on the stream, not only as an answer; the
runner acts on the first `CANCEL` and keeps pinging until it reported its result. It must
answer every ping: five intervals of silence make the runner reconnect.
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from protos import runner_pb2
from workflow_runner.client import RunnerClient, TransientRpcError, classify
from workflow_runner.logs import NO_STEP

log = logging.getLogger(__name__)


class Heartbeat:
    """Keeps the control stream open (reconnecting with backoff) and records a cancel."""

    def __init__(self, client: RunnerClient, interval: float) -> None:
        self._client = client
        self._interval = interval
        # The orchestrator answers every ping; this long without a word means the connection
        # is dead without having been closed (a partition), so open a new one.
        self._stall_after = max(5 * interval, 1.0)
        self.current_step = NO_STEP
        self.cancelled = asyncio.Event()
        self.cancel_reason = ""
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        """Run until `stop`; raises `RunnerAuthError` if the token is refused."""
        stop = asyncio.ensure_future(self._stopped.wait())
        session: asyncio.Future[None] | None = None
        try:
            while not self._stopped.is_set():
                session = asyncio.ensure_future(
                    self._client.with_retry(self._session, "Heartbeat"))
                await asyncio.wait({session, stop}, return_when=asyncio.FIRST_COMPLETED)
                if session.done():
                    session.result()
        finally:
            stop.cancel()
            if session is not None and not session.done():
                session.cancel()
                await asyncio.gather(session, return_exceptions=True)

    async def _session(self) -> None:
        call = self._client.stub.Heartbeat(metadata=self._client.metadata)
        pinger = asyncio.ensure_future(self._ping(call))
        try:
            while True:
                try:
                    control = await asyncio.wait_for(call.read(), self._stall_after)
                except TimeoutError as exc:
                    raise TransientRpcError(
                        f"no answer to heartbeats for {self._stall_after:.0f} s") from exc
                if control is grpc.aio.EOF:
                    break
                self._client.touch()
                if control.action == runner_pb2.Control.CANCEL and not self.cancelled.is_set():
                    self.cancel_reason = control.reason or "cancelled by the orchestrator"
                    log.info("cancel received", extra={"reason": self.cancel_reason})
                    self.cancelled.set()
        except grpc.aio.AioRpcError as exc:
            raise classify(exc, "Heartbeat") from exc
        finally:
            pinger.cancel()
            call.cancel()
        # The orchestrator ended the stream cleanly: open it again after a pause.
        await asyncio.sleep(self._interval)

    async def _ping(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while True:
                await call.write(runner_pb2.HeartbeatPing(job_id=self._client.job_id,
                                                          current_step=self.current_step))
                await asyncio.sleep(self._interval)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the read side of the session reports how the call ended
