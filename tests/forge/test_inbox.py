"""The webhook inbox shared by both integrations: claims across processes, the workflow
cache, and the store's answers (real PostgreSQL; the forge is the fake Forgejo)."""
from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter

import asyncpg

from common.broker import MemoryBroker
from common.forge.answering import SETTLE, Answering
from common.forge.config import InboxSettings
from common.forge.events import Ignored
from common.forge.inbox import Inbox, InboxItem, InboxState, InboxWorker, Received
from common.forge.migrate import open_pool
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import Harness, make_config, service_with
from tests.forge.test_webhooks import PUSH
from tests.tcp_proxy import TcpProxy


async def test_two_workers_never_process_one_delivery_twice(pg_dsn: str) -> None:
    """Two workers on two pools (two integration processes) share 60 deliveries: each is
    processed exactly once, however the claims interleave."""
    pools = [await open_pool(pg_dsn, min_size=1, max_size=4) for _ in range(2)]
    processed: Counter[str] = Counter()
    by_worker: Counter[int] = Counter()
    deliveries = [f"d-{n}" for n in range(60)]
    try:
        for delivery in deliveries:
            assert await Inbox(pools[0]).store(Received("forgejo", delivery, "push", b"{}"),
                                               InboxState.PENDING)

        def processor(worker: int):
            async def process(item: InboxItem) -> Ignored:
                processed[item.delivery_id] += 1
                by_worker[worker] += 1
                await asyncio.sleep(0.01)  # the other worker claims meanwhile
                return Ignored("test")
            return process

        settings = InboxSettings(poll_interval=0.05)
        workers = [InboxWorker(Inbox(pool), ["forgejo"], processor(n), settings=settings, batch=4)
                   for n, pool in enumerate(pools)]
        await asyncio.gather(*(w.run_once() for w in workers))
        assert processed == Counter({d: 1 for d in deliveries})
        assert by_worker[0] > 0 and by_worker[1] > 0, by_worker  # both took a share
        assert await Inbox(pools[0]).counts(["forgejo"]) == {"ignored": 60}
    finally:
        for pool in pools:
            await pool.close()


async def test_a_claimed_delivery_is_not_claimed_again_before_its_lease_ends(
        pool: asyncpg.Pool) -> None:
    inbox = Inbox(pool)
    await inbox.store(Received("gitea", "d-1", "push", b"{}"), InboxState.PENDING)
    [item] = await inbox.claim(["gitea"], limit=10, lease=0.3)
    assert await inbox.claim(["gitea"], limit=10, lease=0.3) == []
    assert await inbox.claim(["forgejo"], limit=10, lease=0.3) == []  # another forge's worker
    await asyncio.sleep(0.4)  # the worker holding it died: the lease ends, it is claimed again
    [again] = await inbox.claim(["gitea"], limit=10, lease=0.3)
    assert (again.id, again.attempts) == (item.id, 2)


async def test_the_second_delivery_of_a_commit_reads_the_workflow_from_the_cache(
        harness: Harness) -> None:
    for delivery in ("first", "second"):  # e.g. the same commit pushed to two branches
        assert (await harness.post(PUSH, "push", delivery=delivery)).status_code == 202
        assert (await harness.settled(delivery)).state is InboxState.DONE
    contents = [path for _, path in harness.forge.requests if "/contents/" in path]
    assert len(contents) == 1, contents
    await harness.wait_for(lambda: len(harness.runs) == 2)
    assert {r.workflow_source for r in harness.runs} == {harness.runs[0].workflow_source}
    # Another commit is another file.
    other = {**PUSH, "after": uuid.uuid4().hex + "0" * 8}
    harness.forge.repos["gordon/hello-world"].files[(other["after"], ".solstice/workflow.kdl")] = \
        harness.runs[0].workflow_source
    assert (await harness.post(other, "push", delivery="third")).status_code == 202
    assert (await harness.settled("third")).state is InboxState.DONE
    assert len([p for _, p in harness.forge.requests if "/contents/" in p]) == 2


async def test_finished_deliveries_are_pruned_and_parked_ones_kept(pool: asyncpg.Pool) -> None:
    inbox = Inbox(pool)
    for delivery, state in (("done", InboxState.DONE), ("ignored", InboxState.IGNORED),
                            ("rejected", InboxState.REJECTED), ("pending", InboxState.PENDING)):
        await inbox.store(Received("forgejo", delivery, "push", b"{}"), state)
    [item] = await inbox.claim(["forgejo"], limit=1, lease=60)
    await inbox.park(item, "boom")
    await inbox.store(Received("github", "other", "push", b"{}"), InboxState.DONE)
    await pool.execute("UPDATE forge_inbox SET received_at = now() - interval '8 days'")
    await inbox.store(Received("forgejo", "recent", "push", b"{}"), InboxState.DONE)
    worker = InboxWorker(inbox, ["forgejo"], lambda item: asyncio.sleep(0),
                         settings=InboxSettings(keep_finished_days=7))
    await worker.run_once()
    assert await inbox.counts(["forgejo"]) == {"parked": 1, "done": 1}
    assert await inbox.counts(["github"]) == {"done": 1}  # another integration's to prune


async def test_a_database_refusing_connections_is_a_503_and_the_redelivery_runs(
        forge: FakeForgejo, pg_dsn: str, broker: MemoryBroker) -> None:
    await (await open_pool(pg_dsn, min_size=1, max_size=1)).close()  # migrates
    proxy = TcpProxy("127.0.0.1", int(re.search(r":(\d+)/", pg_dsn).group(1)))
    await proxy.start()
    pool = await open_pool(re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", pg_dsn),
                           min_size=1, max_size=2)
    try:
        async with service_with(make_config(forge), forge, pool, broker) as h:
            await proxy.stop()
            down = await h.post(PUSH, "push", delivery="outage")
            assert down.status_code == 503, down.text
            assert down.json()["error"].startswith("database unavailable: ")
            ready = await h.http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
            await proxy.start()
            again = await h.post(PUSH, "push", delivery="outage")  # the forge's redelivery
            assert again.status_code == 202, again.text
            assert (await h.settled("outage", timeout=20)).state is InboxState.DONE
            await h.wait_for(lambda: len(h.runs) == 1)
    finally:
        await pool.close()
        await proxy.stop()


async def test_cancelling_the_listener_as_its_connection_dies_ends_it(pg_dsn: str) -> None:
    # The UNLISTEN on a connection that just died used to fail with a database error that
    # replaced the cancel: the listener took it for a lost connection, went on, and the
    # integration's stop waited for it for ever (about one run in two of the test above).
    await (await open_pool(pg_dsn, min_size=1, max_size=1)).close()  # migrates
    proxy = TcpProxy("127.0.0.1", int(re.search(r":(\d+)/", pg_dsn).group(1)))
    for _ in range(10):
        await proxy.start()
        pool = await open_pool(re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", pg_dsn),
                               min_size=1, max_size=1)
        worker = InboxWorker(Inbox(pool), ["gitea"], process=lambda item: Ignored("test"))
        listener = asyncio.create_task(worker.listen(pool))
        try:
            await asyncio.sleep(0.1)  # listening
            await proxy.stop()
            listener.cancel()
            done, _ = await asyncio.wait({listener}, timeout=5)
            assert done, "the cancelled listener is still running"
            assert listener.cancelled()
        finally:
            listener.cancel()
            pool.terminate()


async def test_a_delivery_stored_by_another_process_wakes_the_worker_at_once(
        pool: asyncpg.Pool, pg_dsn: str) -> None:
    """The worker polls only every minute here: NOTIFY is what wakes it."""
    processed = asyncio.Event()

    async def process(item: InboxItem) -> Ignored:
        processed.set()
        return Ignored("test")

    worker = InboxWorker(Inbox(pool), ["gitea"], process,
                         settings=InboxSettings(poll_interval=60))
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(worker.listen(pool))]
    other = await asyncpg.connect(pg_dsn)  # another integration process
    try:
        await asyncio.sleep(0.5)  # the first round found nothing; LISTEN is on
        await Inbox(other).store(Received("forgejo", "not-mine", "push", b"{}"),
                                 InboxState.PENDING)
        await asyncio.sleep(0.3)
        assert not processed.is_set()  # another forge's delivery does not wake it
        await Inbox(other).store(Received("gitea", "mine", "push", b"{}"), InboxState.PENDING)
        async with asyncio.timeout(5):
            await processed.wait()
    finally:
        await other.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_burst_of_stores_shares_statements_and_keeps_each_answer(
        pool: asyncpg.Pool) -> None:
    """64 deliveries stored at once (one id sent twice, one stored before) go out in a few
    INSERTs; each caller still learns whether its own delivery was new."""
    class CountingInbox(Inbox):
        statements = 0

        async def _store_many(self, batch):  # type: ignore[no-untyped-def]
            CountingInbox.statements += 1
            return await super()._store_many(batch)

    inbox = CountingInbox(pool)
    assert await inbox.store(Received("forgejo", "before", "push", b"{}"), InboxState.PENDING)
    ids = [f"d-{n}" for n in range(62)] + ["d-7", "before"]
    stored = await asyncio.gather(*(
        inbox.store(Received("forgejo", delivery, "push", b"{}"), InboxState.PENDING)
        for delivery in ids))
    assert stored == [True] * 62 + [False, False]
    assert CountingInbox.statements <= 3, CountingInbox.statements
    assert await inbox.counts(["forgejo"]) == {"pending": 63}
    rows = await pool.fetch("SELECT delivery_id, finished_at FROM forge_inbox WHERE state = 'pending'")
    assert all(r["finished_at"] is None for r in rows)


async def test_a_finished_state_is_stored_with_its_time_in_a_shared_statement(
        pool: asyncpg.Pool) -> None:
    inbox = Inbox(pool)
    await asyncio.gather(
        inbox.store(Received("gitea", "ignored-1", "issues", b"{}"), InboxState.IGNORED, "no"),
        inbox.store(Received("gitea", "pending-1", "push", b"{}"), InboxState.PENDING))
    rows = {r["delivery_id"]: r for r in await pool.fetch(
        "SELECT delivery_id, state, outcome, finished_at FROM forge_inbox")}
    assert rows["ignored-1"]["state"] == "ignored" and rows["ignored-1"]["outcome"] == "no"
    assert rows["ignored-1"]["finished_at"] is not None
    assert rows["pending-1"]["finished_at"] is None


async def test_the_worker_steps_aside_while_webhooks_are_answered(pool: asyncpg.Pool) -> None:
    """A round waits while a webhook is in flight (and a moment after), but no longer than
    `yield_to_webhooks`: a flood never stops the runs for good."""
    inbox = Inbox(pool)
    await inbox.store(Received("forgejo", "d-1", "push", b"{}"), InboxState.PENDING)
    answering = Answering()
    processed: list[float] = []
    loop = asyncio.get_running_loop()

    async def process(item: InboxItem) -> Ignored:
        processed.append(loop.time())
        return Ignored("test")

    worker = InboxWorker(inbox, ["forgejo"], process, answering=answering,
                         settings=InboxSettings(yield_to_webhooks=0.6))
    answering.started()  # a webhook is being answered
    started = loop.time()
    round_ = asyncio.create_task(worker.run_once())
    await asyncio.sleep(0.2)
    assert processed == []
    answering.ended()
    assert await round_ == 1
    assert 0.2 + SETTLE <= processed[0] - started < 0.6

    await inbox.store(Received("forgejo", "d-2", "push", b"{}"), InboxState.PENDING)
    answering.started()  # and never ends: the round goes ahead after yield_to_webhooks
    started = loop.time()
    assert await worker.run_once() == 1
    assert 0.6 <= processed[1] - started < 1.5
