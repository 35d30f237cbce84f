"""How every `ciadm` command answers: a table for people, or with `--json` one JSON document
on stdout for machines (the Admin messages with their proto field names, every field present).
Errors go to stderr as text either way, with exit status 1."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def as_dict(message: Message) -> dict[str, Any]:
    """An Admin message as JSON-ready data, every field present, proto field names."""
    return MessageToDict(message, always_print_fields_with_no_presence=True,
                         preserving_proto_field_name=True)


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit(args: argparse.Namespace, data: Message | Sequence[Message] | dict[str, Any],
         human: Callable[[], None]) -> None:
    """Print `data` as JSON with `--json`, else call `human` to print the table."""
    if not wants_json(args):
        human()
        return
    if isinstance(data, Message):
        document: Any = as_dict(data)
    elif isinstance(data, dict):
        document = data
    else:
        document = [as_dict(m) for m in data]
    json.dump(document, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True))
              + ("  " if len(row) > 1 else "") + row[-1])
