"""Log shipping: batch masked output into `LogChunk`s, number them, deliver every one.

Delivery contract with the orchestrator's `StreamLogs`:
- Sequence numbers are per job attempt, from 1, without gaps; one number per chunk.
- The runner keeps every chunk until a `LogAck` covers it. A `StreamLogs` call lasts at most a
  few seconds or megabytes (then the runner half-closes and reads the `LogAck`), so acks keep
  coming and memory is released.
- Each call starts by resending everything after the last ack, so after a broken stream or an
  orchestrator restart the server sees chunks it may already hold: it must drop a chunk whose
  seq it stored, and answer `LogAck.last_seq` = the highest seq it stored durably with all
  lower ones stored too. The runner resends anything above it on the next call.
- Beyond `memory_bytes` of unacknowledged output (orchestrator away for long), chunks go to a
  spill file in order, so a chatty step never loses a line nor blocks on a full buffer.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import tempfile
import time
from collections import deque
from typing import BinaryIO

import grpc

from common.masking import SecretMasker
from common.supervise import wait_event
from protos import runner_pb2
from workflow_runner.client import OrchestratorError, RunnerClient, TransientRpcError, classify

log = logging.getLogger(__name__)

# step_index of lines that belong to no step: checkout, setup, artifacts, the result.
NO_STEP = -1
ROTATE_BYTES = 4 * 1024 * 1024
ROTATE_SECONDS = 2.0
WRITE_TIMEOUT = 30.0
ACK_TIMEOUT = 60.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Spill:
    """An append-only file of length-prefixed chunks, read back in the order written."""

    def __init__(self) -> None:
        self._file: BinaryIO | None = None
        self._read_pos = 0
        self._write_pos = 0
        self.count = 0

    def push(self, chunk: runner_pb2.LogChunk) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="solstice-logs-")
        body = chunk.SerializeToString()
        self._file.seek(self._write_pos)
        self._file.write(struct.pack(">I", len(body)) + body)
        self._write_pos = self._file.tell()
        self.count += 1

    def pop(self) -> runner_pb2.LogChunk:
        assert self._file is not None and self.count
        self._file.seek(self._read_pos)
        (size,) = struct.unpack(">I", self._file.read(4))
        chunk = runner_pb2.LogChunk.FromString(self._file.read(size))
        self._read_pos = self._file.tell()
        self.count -= 1
        if not self.count:
            self._file.truncate(0)
            self._read_pos = self._write_pos = 0
        return chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class LogShipper:
    """Collects output, seals it into numbered chunks and streams them until acknowledged."""

    def __init__(self, client: RunnerClient, masker: SecretMasker, *, flush_ms: int = 25,
                 chunk_bytes: int = 65536, memory_bytes: int = 64 * 1024 * 1024) -> None:
        self._client = client
        self._masker = masker
        self._flush_s = flush_ms / 1000
        self._chunk_bytes = chunk_bytes
        self._memory_limit = memory_bytes
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_key: tuple[int, int] = (0, 0)
        self._pending_ts = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._next_seq = 1
        self._acked = 0
        self._mem: deque[runner_pb2.LogChunk] = deque()  # seqs acked+1 .. acked+len(mem)
        self._mem_bytes = 0
        self._spill = _Spill()
        self._wakeup = asyncio.Event()
        self._acked_event = asyncio.Event()
        self._closing = False
        self._new_masks: list[bytes] = []

    @property
    def last_seq(self) -> int:
        """The highest sequence number handed out so far."""
        return self._next_seq - 1

    def append(self, step_index: int, stream: int, data: bytes) -> None:
        """Queue already-masked output (whole lines); never blocks, never drops."""
        if not data:
            return
        key = (step_index, stream)
        if self._pending and (key != self._pending_key
                              or self._pending_size + len(data) > self._chunk_bytes):
            self._seal()
        if not self._pending:
            self._pending_key = key
            self._pending_ts = now_ms()
            self._flush_timer = asyncio.get_running_loop().call_later(self._flush_s, self._seal)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self._chunk_bytes:
            self._seal()

    def report_mask(self, value: bytes) -> None:
        """Tell the orchestrator about a value the job added to the masks: it travels with
        the next chunk sealed, before any later output."""
        self._new_masks.append(value)

    def system(self, step_index: int, text: str) -> None:
        """A line the runner writes itself (checkout, timeouts), masked like any output."""
        line = text if text.endswith("\n") else text + "\n"
        self.append(step_index, runner_pb2.SYSTEM, self._masker.mask(line.encode()))

    def _seal(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        step_index, stream = self._pending_key
        chunk = runner_pb2.LogChunk(
            job_id=self._client.job_id, step_index=step_index, seq=self._next_seq,
            stream=stream, timestamp_unix_ms=self._pending_ts, data=b"".join(self._pending),
            added_masks=self._new_masks)
        self._new_masks = []
        self._next_seq += 1
        self._pending.clear()
        self._pending_size = 0
        if self._spill.count or self._mem_bytes > self._memory_limit:
            if not self._spill.count:
                log.warning("unacknowledged logs exceed %d bytes in memory; spilling to a "
                            "temporary file", self._memory_limit)
            self._spill.push(chunk)
        else:
            self._mem.append(chunk)
            self._mem_bytes += len(chunk.data)
        self._wakeup.set()

    def _chunk(self, seq: int) -> runner_pb2.LogChunk:
        """The unacknowledged chunk `seq`, moving it out of the spill file when needed."""
        index = seq - self._acked - 1
        while index >= len(self._mem):
            chunk = self._spill.pop()
            self._mem.append(chunk)
            self._mem_bytes += len(chunk.data)
        return self._mem[index]

    def _ack(self, last_seq: int, highest_sent: int) -> None:
        if last_seq > highest_sent:
            raise OrchestratorError(
                f"StreamLogs acknowledged seq {last_seq} but the runner sent only up to "
                f"{highest_sent}", hint="the orchestrator must count seqs per job attempt")
        while self._acked < last_seq:
            chunk = self._mem.popleft()
            self._mem_bytes -= len(chunk.data)
            self._acked += 1
        self._acked_event.set()

    async def run(self) -> None:
        """Deliver chunks until `close` was called and every chunk is acknowledged."""
        try:
            while True:
                while self._acked == self.last_seq:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                await self._client.with_retry(self._session, "StreamLogs")
        finally:
            self._spill.close()

    async def close(self) -> int:
        """Send what is pending and wait until all of it is acknowledged; return the last seq."""
        self._seal()
        self._closing = True
        self._wakeup.set()
        while self._acked < self.last_seq:
            self._acked_event.clear()
            await self._acked_event.wait()
        return self.last_seq

    async def _session(self) -> None:
        """One StreamLogs call: resend the unacknowledged, then follow new output a while."""
        call = self._client.stub.StreamLogs(metadata=self._client.metadata)
        seq = self._acked + 1
        sent_bytes = 0
        deadline = asyncio.get_running_loop().time() + ROTATE_SECONDS
        try:
            while not call.done():
                if seq <= self.last_seq:
                    chunk = self._chunk(seq)
                    await asyncio.wait_for(call.write(chunk), WRITE_TIMEOUT)
                    seq += 1
                    sent_bytes += len(chunk.data)
                    if sent_bytes >= ROTATE_BYTES:
                        break
                    continue
                if self._closing:
                    break
                self._wakeup.clear()
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                if not await wait_event(self._wakeup, remaining):
                    break
            if not call.done():
                await call.done_writing()
            ack = await asyncio.wait_for(call, ACK_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise classify(exc, "StreamLogs") from exc
        except (TimeoutError, asyncio.InvalidStateError) as exc:
            call.cancel()
            raise TransientRpcError(f"StreamLogs stalled or closed: {exc!r}") from exc
        self._client.touch()
        self._ack(ack.last_seq, seq - 1)
        if ack.last_seq < seq - 1:
            raise TransientRpcError(
                f"StreamLogs stored up to seq {ack.last_seq} of {seq - 1}; resending the rest")
