"""`cidev validate [PATH...]`: check workflow files; exit 0 if all are valid, 1 if not."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cidev.workflow_file import UsageError, load, render
from common.workflow import DEFAULT_PATH, WorkflowError, expand


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="check workflow files and report every problem",
        description="Check KDL workflow files. Exit status: 0 all valid, 1 some invalid,"
                    " 2 a file could not be read.")
    parser.add_argument("paths", nargs="*", type=Path, default=[Path(DEFAULT_PATH)],
                        metavar="PATH", help=f"workflow files (default: {DEFAULT_PATH})")
    parser.add_argument("--json", action="store_true", help="print one JSON document for machines")
    parser.set_defaults(handler=run)


def _check(path: Path) -> tuple[dict[str, Any], str]:
    """Validate one file: its JSON record and its human report."""
    try:
        workflow = load(path)
    except UsageError as exc:
        record = {"path": str(path), "valid": False, "usage_error": exc.message, "hint": exc.hint,
                  "errors": []}
        return record, f"cidev: error: {exc}"
    except WorkflowError as exc:
        count = len(exc.diagnostics)
        record = {"path": str(path), "valid": False,
                  "errors": [d.to_dict() for d in exc.diagnostics]}
        summary = f"{path}: {count} error{'s' if count > 1 else ''}"
        return record, f"{render(exc)}\n{summary}"
    planned = len(expand(workflow))
    record = {"path": str(path), "valid": True, "errors": [], "jobs": len(workflow.jobs),
              "planned_jobs": planned}
    return record, f"{path}: ok ({len(workflow.jobs)} jobs, {planned} after matrix expansion)"


def run(args: argparse.Namespace) -> int:
    results = [_check(path) for path in args.paths]
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
