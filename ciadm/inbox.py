"""`ciadm inbox`: the forge integrations' webhook inboxes, as the orchestrator reaches them.

    ciadm inbox                  # per integration: counts per state, then pending and parked
    ciadm inbox --parked         # only the parked deliveries
    ciadm inbox --retry FORGE:ID # process a parked delivery again (e.g. forgejo:17)

The orchestrator asks every integration of its `[orchestrator.checkout_credentials.<forge>]`
tables; one that does not answer is listed with why, the others as usual (exit status 0).
"""
from __future__ import annotations

import argparse

from ciadm.client import AddCommand, Client, limit, when
from ciadm.output import emit, table
from common.cli import one_line
from protos import admin_pb2


def inbox_ref(value: str) -> tuple[str, int]:
    """`--retry`'s FORGE:ID, e.g. `forgejo:17`."""
    forge, _, number = value.partition(":")
    if not forge or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not FORGE:ID (e.g. forgejo:17, as "
                                         "`ciadm inbox` lists them)")
    return forge, int(number)


# The backlog first; the other states (done, ignored, rejected) after, by name.
BACKLOG = ("pending", "parked")


def _counts(inbox: admin_pb2.IntegrationInbox) -> str:
    states = [*BACKLOG, *sorted(set(inbox.counts) - set(BACKLOG))]
    return "  ".join(f"{state} {inbox.counts.get(state, 0)}" for state in states)


def print_inbox(inbox: admin_pb2.IntegrationInbox) -> None:
    """One integration's inbox: a line of counts (or why it did not answer), then its
    deliveries."""
    where = f"{inbox.url} ({', '.join(inbox.forges)})"
    if inbox.error:
        print(f"{where}: NO ANSWER: {one_line(inbox.error)}")
        return
    print(f"{where}: {_counts(inbox)}")
    if inbox.deliveries:
        table([(f"{d.forge}:{d.id}", d.delivery_id, d.event, d.state, str(d.attempts),
                when(d.received_unix_ms), one_line(d.last_error))
               for d in inbox.deliveries],
              ("ID", "DELIVERY", "EVENT", "STATE", "TRY", "RECEIVED", "LAST ERROR"))


async def cmd_inbox(client: Client, args: argparse.Namespace) -> int:
    if args.retry is not None:
        forge, number = args.retry
        delivery = await client.stub.RetryInbox(
            admin_pb2.RetryInboxRequest(forge=forge, id=number), metadata=client.metadata)
        emit(args, delivery, lambda: print(
            f"delivery {forge}:{number} ({delivery.delivery_id}, {delivery.event}) is "
            f"{delivery.state} again; the integration's inbox worker processes it next"))
        return 0
    reply = await client.stub.ListInbox(
        admin_pb2.ListInboxRequest(parked_only=args.parked, limit=args.limit or 0),
        metadata=client.metadata)

    def human() -> None:
        for inbox in reply.integrations:
            print_inbox(inbox)

    emit(args, reply, human)
    return 0


def register(add: AddCommand) -> None:
    p = add("inbox", cmd_inbox, "the forge integrations' webhook inboxes: deliveries pending "
                                "and parked, or retry a parked one")
    p.add_argument("--parked", action="store_true", help="only the parked deliveries")
    p.add_argument("--limit", type=limit, help="deliveries per integration (default 100)")
    p.add_argument("--retry", type=inbox_ref, metavar="FORGE:ID",
                   help="process parked delivery ID of FORGE again (e.g. forgejo:17)")
