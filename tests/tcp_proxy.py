"""A TCP forwarder the test controls: `stop()` is a server that went away (every connection
dropped, new ones refused), `start()` brings it back on the same port."""
from __future__ import annotations

import asyncio
import contextlib
import functools


class TcpProxy:
    """Forwards `127.0.0.1:port` to `target_host:target_port` while started."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # Bumped by stop(): a connection accepted before it, still connecting upstream, is
        # dropped rather than left forwarding.
        self._generation = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            functools.partial(self._accept, self._generation), "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._generation += 1
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, generation: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if generation != self._generation:  # stopped meanwhile
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)
