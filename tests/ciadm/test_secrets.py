"""`ciadm secret` in a subprocess against a real orchestrator's Admin service: values go in
through stdin or a no-echo prompt, never come back out."""
from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import termios
import time
from pathlib import Path

from common.messages import Repo
from orchestrator.secretstore import RunContext
from tests.ciadm.test_admin import ciadm
from tests.orchestrator.conftest import ADMIN_TOKEN, Factory, Harness
from tests.orchestrator.test_secret_store import key_file

VALUE = "pr0duction-deploy-key"


async def ciadm_stdin(harness: Harness, data: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ciadm.main", "--orchestrator", harness.orchestrator.admin_url,
           "--token", ADMIN_TOKEN, *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate(data)
    return subprocess.CompletedProcess(cmd, proc.returncode or 0, out.decode(), err.decode())


async def test_set_list_delete_never_show_the_value(orchestrator_factory: Factory,
                                                   tmp_path: Path) -> None:
    harness = await orchestrator_factory(secret_keys=[key_file(tmp_path, "k1")])
    made = await ciadm_stdin(harness, VALUE.encode() + b"\n", "secret", "set", "repo:Acme/Widgets",
                             "DEPLOY_KEY", "--branch", "main", "--branch", "release/*",
                             "--event", "push")
    assert made.returncode == 0, made.stderr
    assert "set DEPLOY_KEY at repo:acme/widgets" in made.stdout and VALUE not in made.stdout
    pem = b"-----BEGIN KEY-----\nAAAA\nBBBB\n-----END KEY-----\n"
    assert (await ciadm_stdin(harness, pem, "secret", "set", "global", "PEM")).returncode == 0
    listed = await ciadm(harness, "secret", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and VALUE not in listed.stdout
    deploy = next(line for line in lines if "DEPLOY_KEY" in line)
    assert "repo:acme/widgets" in deploy and "branches main,release/*" in deploy
    assert "events push" in deploy and "key k1" in deploy and "set by token:bootstrap" in deploy
    only = await ciadm(harness, "secret", "list", "global")
    assert "PEM" in only.stdout and "DEPLOY_KEY" not in only.stdout
    # The value went in whole (one trailing newline dropped) and is stored sealed.
    store = harness.orchestrator.secret_store
    run = RunContext(repo=Repo(forge="github", owner="acme", name="widgets", clone_url="x"),
                     event="push", branch="main", trusted=True)
    assert await store.for_job(["DEPLOY_KEY", "PEM"], run) == {
        "DEPLOY_KEY": VALUE, "PEM": pem.decode()[:-1]}
    deleted = await ciadm(harness, "secret", "delete", "repo:acme/widgets", "DEPLOY_KEY")
    assert deleted.returncode == 0 and "deleted DEPLOY_KEY" in deleted.stdout
    again = await ciadm(harness, "secret", "delete", "repo:acme/widgets", "DEPLOY_KEY")
    assert again.returncode == 1 and "no secret 'DEPLOY_KEY' at scope repo:acme/widgets" in again.stderr
    audited = (await ciadm(harness, "audit")).stdout
    assert VALUE not in audited and "BBBB" not in audited
    for action in ("secret.set", "secret.delete"):
        assert action in audited and "repo:acme/widgets DEPLOY_KEY" in audited
    assert "refused: no secret 'DEPLOY_KEY'" in audited


async def test_refusals(orchestrator_factory: Factory, tmp_path: Path) -> None:
    harness = await orchestrator_factory(secret_keys=[key_file(tmp_path, "k1")])
    short = await ciadm_stdin(harness, b"abc\n", "secret", "set", "global", "TINY")
    assert short.returncode == 1 and "shorter than 4 characters" in short.stderr
    scope = await ciadm_stdin(harness, b"long-enough", "secret", "set", "org:acme", "X")
    assert scope.returncode == 1 and "is not a scope" in scope.stderr and "owner:ORG" in scope.stderr
    # A value is never an argument.
    argument = await ciadm_stdin(harness, b"", "secret", "set", "global", "X", VALUE)
    assert argument.returncode == 2 and "unrecognized arguments" in argument.stderr
    binary = await ciadm_stdin(harness, b"\xff\xfe-not-text", "secret", "set", "global", "X")
    assert binary.returncode == 1 and "not UTF-8 text" in binary.stderr
    empty = await ciadm_stdin(harness, b"", "secret", "set", "global", "X")
    assert empty.returncode == 1 and "no value for X on standard input" in empty.stderr
    assert "no secrets" in (await ciadm(harness, "secret", "list")).stdout
    anonymous = await ciadm(harness, "secret", "list", token=None)
    assert anonymous.returncode == 1 and "needs the admin token" in anonymous.stderr
    # Without keys nothing can be stored, and ciadm says why.
    keyless = await orchestrator_factory()
    refused = await ciadm_stdin(keyless, VALUE.encode(), "secret", "set", "global", "X")
    assert refused.returncode == 1 and "no secret_keys configured" in refused.stderr


def _prompted(harness: Harness, typed: list[bytes]) -> tuple[int, bytes]:
    """`ciadm secret set` on a terminal of its own (a pty as its controlling terminal)."""
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "ciadm.main", "--orchestrator", harness.orchestrator.admin_url,
         "--token", ADMIN_TOKEN, "secret", "set", "global", "TYPED"],
        stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_terminal)
    os.close(slave)
    seen = b""
    for answer in typed:
        deadline = time.monotonic() + 20
        while b": " not in seen.rsplit(b"\n", 1)[-1] and time.monotonic() < deadline:
            seen += os.read(master, 4096)
        os.write(master, answer)
        seen += b"\n"
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        seen += data
    os.close(master)
    return proc.wait(20), seen


async def test_a_typed_value_is_not_echoed(orchestrator_factory: Factory, tmp_path: Path) -> None:
    harness = await orchestrator_factory(secret_keys=[key_file(tmp_path, "k1")])
    status, screen = await asyncio.to_thread(_prompted, harness, [VALUE.encode() + b"\n"] * 2)
    assert status == 0, screen
    assert b"value of TYPED (not shown): " in screen and b"set TYPED at global" in screen
    assert VALUE.encode() not in screen
    status, screen = await asyncio.to_thread(_prompted, harness,
                                             [b"one-value\n", b"another-value\n"])
    assert status == 1 and b"the two values differ" in screen


async def test_rotate_key(orchestrator_factory: Factory, tmp_path: Path) -> None:
    k1, k2 = key_file(tmp_path, "k1"), key_file(tmp_path, "k2")
    old = await orchestrator_factory(secret_keys=[k1])
    for name in ("A", "B"):
        assert (await ciadm_stdin(old, VALUE.encode(), "secret", "set", "global", name)).returncode == 0
    new = await orchestrator_factory(secret_keys=[k2])
    missing = await ciadm(new, "secret", "rotate-key")
    assert missing.returncode == 1 and "key 'k1'" in missing.stderr
    both = await orchestrator_factory(secret_keys=[k1, k2])
    rotated = await ciadm(both, "secret", "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 2 secret(s) under key k2 (0 already were)" in rotated.stdout
    assert "key k2" in (await ciadm(new, "secret", "list")).stdout
