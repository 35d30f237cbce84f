"""moto's standalone S3 server over real HTTP for the tests that need an S3 endpoint: moto is
the only S3 implementation that runs here. `moto_url` is a module-scoped fixture; import it
into a test module (or a conftest) to use it."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiobotocore.session import get_session

# moto accepts any credentials; these make botocore sign requests as it would for AWS.
CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}
SESSION = get_session()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's S3 on 127.0.0.1, for one test module."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)


async def new_bucket(url: str) -> str:
    """A new empty bucket on the server at `url`; its name."""
    bucket = f"solstice-{uuid.uuid4().hex[:12]}"
    async with SESSION.create_client("s3", endpoint_url=url, **CREDENTIALS) as client:
        await client.create_bucket(Bucket=bucket)
    return bucket
