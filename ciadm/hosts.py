"""`ciadm hosts`: the orchestrator hosts, their capacity and health."""
from __future__ import annotations

import argparse

from ciadm.client import AddCommand, Client, when
from ciadm.output import emit
from protos import admin_pb2


async def cmd_hosts(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.ListHosts(admin_pb2.ListHostsRequest(), metadata=client.metadata)

    def human() -> None:
        if not reply.hosts:
            print("no orchestrator hosts registered")
        for host in reply.hosts:
            print_host(host)

    emit(args, list(reply.hosts), human)
    return 0


def print_host(host: admin_pb2.Host) -> None:
    """One host on one line, as `ciadm hosts` lists them."""
    capacity = ",".join(f"{k}={v}" for k, v in sorted(host.capacity.items()))
    health = "alive" if host.alive else "STALE" if host.state != "stopped" else "stopped"
    drained = "  DRAINED" if host.drained else ""
    held = f"held {host.held_jobs:<2} " if host.held_jobs else ""
    print(f"{host.name:<24} {host.state:<9} {health:<8} jobs {host.active_jobs:<3} {held}"
          f"capacity {capacity}  heartbeat {when(host.last_heartbeat_unix_ms)}{drained}")


def register(add: AddCommand) -> None:
    add("hosts", cmd_hosts, "list orchestrator hosts, their capacity and health")
