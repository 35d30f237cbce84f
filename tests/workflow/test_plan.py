"""Plan helpers: matrix expansion, needs between expansions, order, triggers, conditions."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.workflow import (
    EvalContext,
    evaluate_if,
    expand,
    load_workflow,
    matches_trigger,
    topological_order,
)
from common.workflow.plan import PlannedJob, glob_matches

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_full_example_expands_with_stable_keys() -> None:
    workflow = load_workflow((EXAMPLES / "full.kdl").read_text())
    planned = expand(workflow)
    builds = ["build[rust=stable,os=omnios]", "build[rust=stable,os=openindiana]",
              "build[rust=1.80,os=omnios]", "build[rust=nightly,os=omnios]"]
    assert [p.key for p in planned] == ["lint", *builds, "release"]
    assert planned[1].matrix == {"rust": "stable", "os": "omnios"}
    assert [p.runs_on for p in planned[1:5]] == ["illumos-omnios", "illumos-openindiana",
                                                  "illumos-omnios", "illumos-omnios"]
    assert planned[4].steps[1].name == "Test on nightly"
    assert planned[4].steps[1].run == "cargo +nightly test --workspace"
    assert all(p.needs == ("lint",) for p in planned[1:5])
    assert planned[5].needs == tuple(builds)
    assert [p.key for p in topological_order(list(reversed(planned)))] == [
        "lint", *reversed(builds), "release"]
    assert expand(workflow) == planned  # same workflow, same plan


def test_substitution_and_needs_on_a_matrixed_job() -> None:
    text = '''workflow {
        job id="build" runs_on="${{ matrix.os }}-large" {
            matrix {
                os "omnios" "linux"
                py 3 "3.12"
                exclude os="linux" py=3
            }
            step name="Build on ${{matrix.os}}" run="make PY=${{ matrix.py }} OS=${{ matrix.os }}"
        }
        job id="ship" runs_on="x" {
            needs "build"
            step name="Ship" run="make ship"
        }
    }'''
    planned = expand(load_workflow(text))
    build = planned[:3]
    assert [p.key for p in build] == ["build[os=omnios,py=3]", "build[os=omnios,py=3.12]",
                                      "build[os=linux,py=3.12]"]
    assert [p.runs_on for p in build] == ["omnios-large", "omnios-large", "linux-large"]
    assert build[2].steps[0].name == "Build on linux"
    assert build[2].steps[0].run == "make PY=3.12 OS=linux"
    ship = planned[3]
    assert ship.key == "ship" and ship.needs == tuple(p.key for p in build)
    assert ship.steps == ship.job.steps


def test_include_adds_and_does_not_duplicate() -> None:
    text = '''workflow { job id="t" runs_on="x" {
        matrix { a "1" "2"; include a="3"; include a="1" }
        step name="T" run="t"
    } }'''
    assert [p.key for p in expand(load_workflow(text))] == ["t[a=1]", "t[a=2]", "t[a=3]"]


def _job(key: str, *needs: str) -> PlannedJob:
    workflow = load_workflow('workflow { job id="x" runs_on="x" { step name="x" run="x" } }')
    return PlannedJob(key=key, job=workflow.jobs[0], runs_on="x", steps=(), needs=needs)


def test_topological_order_keeps_declaration_order_for_ties() -> None:
    jobs = [_job("d", "b", "c"), _job("a"), _job("c", "a"), _job("b", "a"), _job("e")]
    assert [j.key for j in topological_order(jobs)] == ["a", "c", "b", "d", "e"]


def test_topological_order_refuses_cycles_and_unknown_needs() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order([_job("a", "b"), _job("b", "a")])
    with pytest.raises(ValueError, match="not among the jobs"):
        topological_order([_job("a", "zzz")])


def test_long_chain_orders_without_recursion() -> None:
    jobs = [_job("j0")] + [_job(f"j{i}", f"j{i - 1}") for i in range(1, 5000)]
    assert [j.key for j in topological_order(list(reversed(jobs)))] == [j.key for j in jobs]


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("main", "main", True),
    ("main", "mainline", False),
    ("release/*", "release/1.0", True),
    ("release/*", "release/1.0/hotfix", False),
    ("release/**", "release/1.0/hotfix", True),
    ("v?", "v1", True),
    ("v*", "v1.2.3", True),
    ("feat.x", "featXx", False),
])
def test_glob(pattern: str, name: str, matches: bool) -> None:
    assert glob_matches(pattern, name) is matches


def test_triggers() -> None:
    text = '''workflow {
        on "push" branches="main" "release/*"
        on "pull_request"
        on "tag" "v*"
        job id="a" runs_on="x" { step name="a" run="a"; }
    }'''
    workflow = load_workflow(text)
    assert matches_trigger(workflow, "push", branch="main")
    assert matches_trigger(workflow, "push", branch="release/2")
    assert not matches_trigger(workflow, "push", branch="feature/x")
    assert not matches_trigger(workflow, "push")
    assert matches_trigger(workflow, "pull_request", branch="anything")
    assert matches_trigger(workflow, "tag", tag="v1.0")
    assert not matches_trigger(workflow, "tag", tag="nightly")
    assert not matches_trigger(workflow, "manual")
    everything = load_workflow('workflow { job id="a" runs_on="x" { step name="a" run="a"; } }')
    assert matches_trigger(everything, "manual") and matches_trigger(everything, "push", branch="x")


def test_job_and_step_conditions_with_matrix_values() -> None:
    workflow = load_workflow((EXAMPLES / "full.kdl").read_text())
    run = EvalContext(event="push", branch="main")
    planned = expand(workflow)[1]
    assert evaluate_if(planned.job.if_expr, planned.context(run))
    assert [evaluate_if(s.if_expr, planned.context(run)) for s in planned.steps] == [True, True]
    pr = EvalContext(event="pull_request", branch="feature")
    assert [evaluate_if(s.if_expr, planned.context(pr)) for s in planned.steps] == [True, False]
    assert not evaluate_if(planned.job.if_expr, EvalContext(event="push", branch="feature"))
    text = '''workflow { job id="t" runs_on="x" {
        matrix { os "a" "b" }
        step name="only on a" run="t" if="matrix.os == 'a'"
    } }'''
    conditions = [evaluate_if(p.steps[0].if_expr, p.context(run)) for p in expand(load_workflow(text))]
    assert conditions == [True, False]
