"""Validate a generated 1,000-job workflow (10 steps each, needs chains, a matrix).

Prints the median time of `load_workflow` (goal: <= 100 ms), and of the same file with one
error in its last job, which adds the scan that turns problems into line:col.
Run: .venv/bin/python bench/kdl_validate.py
"""
from __future__ import annotations

import statistics
import time

from common.workflow import WorkflowError, expand, load_workflow

JOBS = 1000
STEPS = 10
RUNS = 7
GOAL_MS = 100.0


def generate(jobs: int = JOBS, steps: int = STEPS, broken: bool = False) -> str:
    """A workflow whose jobs form chains of ten (`needs` the previous one); job 0 has a matrix."""
    out = ['workflow name="bench" fail_fast=#true {', '    on "push" branches="main" "release/*"',
           '    env RUST_LOG="info"']
    for i in range(jobs):
        props = f'id="job-{i}" runs_on="illumos-stable" timeout="45m"'
        if i == 0:
            props = 'id="job-0" runs_on="${{ matrix.os }}" timeout="1h30m"'
        out.append(f"    job {props} {{")
        if i % 10:
            needs = "job-missing" if broken and i == jobs - 1 else f"job-{i - 1}"
            out.append(f'        needs "{needs}"')
        if i == 0:
            out += ["        matrix {", '            rust "stable" "1.80" "nightly"',
                    '            os "omnios" "openindiana"', '            exclude rust="nightly" os="openindiana"',
                    "        }"]
        out.append("        if \"branch == 'main' || event == 'pull_request'\"")
        out.append('        resources vcpus=2 ram="4G" disk="20G"')
        for s in range(steps):
            out.append(f'        step name="step {s} of job {i}" run="make target-{s} JOBS=4" timeout="10m"')
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


def median_ms(text: str) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        try:
            load_workflow(text, "bench.kdl")
        except WorkflowError:
            pass
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    text = generate()
    workflow = load_workflow(text, "bench.kdl")
    planned = len(expand(workflow))
    valid = median_ms(text)
    broken_text = generate(broken=True)
    try:
        load_workflow(broken_text, "bench.kdl")
    except WorkflowError as exc:
        where = exc.diagnostics[0]
        located = f"{where.line}:{where.col}"
    invalid = median_ms(broken_text)
    print(f"document: {len(text) / 1024:.0f} KiB, {len(workflow.jobs)} jobs, {planned} after matrix expansion,"
          f" {sum(len(j.steps) for j in workflow.jobs)} steps")
    print(f"validate (valid file):          median {valid:.1f} ms of {RUNS} runs"
          f" (goal <= {GOAL_MS:.0f} ms: {'met' if valid <= GOAL_MS else 'MISSED'})")
    print(f"validate (one error, at {located}): median {invalid:.1f} ms of {RUNS} runs")


if __name__ == "__main__":
    main()
