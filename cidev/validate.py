"""`cidev validate [PATH...]`: check workflow files; exit 0 if all are valid, 1 if not."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cidev.workflow_file import UsageError, load, render, workflow_path
from common.text import plural
from common.workflow import DEFAULT_PATH, WorkflowError, expand


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="check workflow files and report every problem",
        description="Check KDL workflow files. Exit status: 0 all valid, 1 some invalid,"
                    " 2 a file could not be read.")
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help=f"workflow files, or repository directories holding {DEFAULT_PATH}"
                             f" (default: the {DEFAULT_PATH} of the current directory or the "
                             "nearest one above it)")
    parser.add_argument("--json", action="store_true", help="print one JSON document for machines")
    parser.set_defaults(handler=run)


def _check(given: Path | None) -> tuple[dict[str, Any], str]:
    """Validate one file (`None`: the one found upwards): its JSON record and human report."""
    path = given or Path(DEFAULT_PATH)
    try:
        path = workflow_path(given)
        workflow = load(path)
    except UsageError as exc:
        record = {"path": str(path), "valid": False, "usage_error": exc.message, "hint": exc.hint,
                  "errors": []}
        return record, f"cidev: error: {exc}"
    except WorkflowError as exc:
        record = {"path": str(path), "valid": False,
                  "errors": [d.to_dict() for d in exc.diagnostics]}
        return record, f"{render(exc)}\n{path}: {plural(len(exc.diagnostics), 'error')}"
    planned = len(expand(workflow))
    record = {"path": str(path), "valid": True, "errors": [], "jobs": len(workflow.jobs),
              "planned_jobs": planned}
    return record, (f"{path}: ok ({plural(len(workflow.jobs), 'job')}, {planned} after matrix"
                    " expansion)")


def run(args: argparse.Namespace) -> int:
    results = [_check(path) for path in args.paths or [None]]
    records = [record for record, _ in results]
    if args.json:
        json.dump({"valid": all(r["valid"] for r in records), "files": records}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for record, report in results:
            print(report, file=sys.stdout if record["valid"] else sys.stderr)
    if any("usage_error" in r for r in records):
        return 2
    return 0 if all(r["valid"] for r in records) else 1
