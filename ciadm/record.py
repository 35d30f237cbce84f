"""`ciadm manifest` and `ciadm bundle`: a run's record as it was written when the run ended."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from ciadm.client import AddCommand, Client
from common.errors import SolsticeError
from protos import admin_pb2


async def cmd_manifest(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.GetManifest(admin_pb2.RunRef(run_id=args.run),
                                          metadata=client.metadata)
    print(reply.manifest_json)
    return 0


async def cmd_bundle(client: Client, args: argparse.Namespace) -> int:
    target = Path(args.output or f"run-{args.run}.tar.gz")
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            async for chunk in client.stub.GetBundle(admin_pb2.RunRef(run_id=args.run),
                                                     metadata=client.metadata):
                out.write(chunk.data)
                digest.update(chunk.data)
                size += len(chunk.data)
                if sys.stderr.isatty():
                    print(f"\r{size / 1048576:.1f} MiB", end="", file=sys.stderr, flush=True)
        os.replace(partial, target)
    except OSError as exc:
        raise SolsticeError(f"cannot write {target}: {exc.strerror}",
                            hint="choose another place with -o FILE") from exc
    finally:
        partial.unlink(missing_ok=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
    print(f"{digest.hexdigest()}  {target}")
    return 0


def register(add: AddCommand) -> None:
    add("manifest", cmd_manifest, "print an ended run's manifest.json (jobs, steps, artifacts "
        "with sha256, the gate's verdict)").add_argument("run")
    bundle = add("bundle", cmd_bundle, "download an ended run's record as one .tar.gz "
                 "(manifest.json first, then every artifact) and print its sha256")
    bundle.add_argument("run")
    bundle.add_argument("-o", "--output", metavar="FILE",
                        help="where to write it (default run-RUN.tar.gz here)")
