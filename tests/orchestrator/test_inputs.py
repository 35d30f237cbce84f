"""Artifacts pass between jobs: a job gets what the jobs it `needs` published, under
`inputs/<job-key>/`, before its setup and steps (real runner processes, gRPC, Postgres)."""
from __future__ import annotations

import asyncio

from tests.orchestrator.conftest import Harness


async def test_a_job_reads_what_its_needs_published(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="build" runs_on="local" {
        matrix { os "omnios" "smartos"; }
        step name="Compile" run="mkdir -p out/lib && printf 'lib for ${{ matrix.os }}' > out/lib/lib.a"
    }
    job id="docs" runs_on="local" {
        artifacts "manual.txt"
        step name="Write" run="echo manual > manual.txt && mkdir out && head -c 3000000 /dev/urandom > out/big.bin"
    }
    job id="package" runs_on="local" {
        needs "build" "docs"
        step name="List" run="find inputs -type f | sort"
        step name="Read" run="cat 'inputs/build[os=smartos]/out/lib/lib.a'; grep -qx manual inputs/docs/manual.txt"
        step name="Big" run="test $(wc -c < inputs/docs/out/big.bin) -eq 3000000"
    }
    job id="alone" runs_on="local" {
        step name="None" run="test ! -e inputs"
    }
}''')
    assert summary.state == "success", [(j.key, j.state, j.message) for j in summary.jobs]
    package = next(j for j in summary.jobs if j.key == "package")
    log = (await harness.logs(package.job_id)).decode()
    assert "inputs/build[os=omnios]/out/lib/lib.a" in log
    assert "inputs/docs/manual.txt" in log and "inputs/docs/out/big.bin" in log
    assert "lib for smartos" in log  # printed without a newline, right before the next line
    assert "inputs: 4 files" in log


async def test_an_input_that_no_longer_matches_its_digest_errs_the_job(harness: Harness) -> None:
    run_id = await harness.submit('''
workflow {
    job id="build" runs_on="local" { step name="Make" run="mkdir out && echo lib > out/lib.a" }
    job id="wait" runs_on="local" { step name="Hold" run="sleep 1" }
    job id="use" runs_on="local" {
        needs "build" "wait"
        step name="Never" run="echo never ran"
    }
}''')
    # Damage the stored record of build's artifact while `use` still waits for `wait`.
    pool = harness.orchestrator.db.pool
    for _ in range(200):
        if await pool.fetchval("SELECT count(*) FROM artifacts a JOIN jobs j ON j.id = a.job_id"
                               " WHERE j.run_id = $1", run_id):
            break
        await asyncio.sleep(0.05)
    await pool.execute("UPDATE artifacts a SET sha256 = repeat('0', 64) FROM jobs j"
                       " WHERE j.id = a.job_id AND j.run_id = $1", run_id)
    summary = await harness.api.wait(run_id)
    use = next(j for j in summary.jobs if j.key == "use")
    assert use.state == "error", use
    assert "input build/out/lib.a arrived with" in use.message
    assert [s.state for s in use.steps] == ["skipped"]
    assert b"never ran" not in await harness.logs(use.job_id)
