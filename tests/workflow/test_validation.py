"""Each validation rule: what is rejected, where it is reported, and what the hint says."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.workflow import Resources, Step, Trigger, WorkflowError, load_workflow
from tests.workflow.helpers import at, diagnostics, only, position

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED = 'workflow { job id="build" runs_on="illumos" { step name="Build" run="make" } }'


def job(body: str, props: str = 'id="build" runs_on="illumos"') -> str:
    """A workflow with one job; `body` goes inside the job's block."""
    return f"workflow {{\n    job {props} {{\n{body}\n    }}\n}}\n"


STEP = '        step name="Build" run="make"'


# -- what must keep working -------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    SEED,
    'workflow {\n  job id="build" runs_on="illumos" {\n    step name="Build" run="make"\n  }\n}\n',
    # KDL 1.0 syntax: raw string and bare boolean
    'workflow fail_fast=true { job id="b" runs_on="x" { step name="B" run=r#"make "all""# } }',
])
def test_seed_minimal_form_loads(text: str) -> None:
    workflow = load_workflow(text)
    assert workflow.jobs[0].steps[0].name == "Build" or workflow.jobs[0].id == "b"


def test_full_example_loads_every_part() -> None:
    workflow = load_workflow((EXAMPLES / "full.kdl").read_text(), "examples/full.kdl")
    assert workflow.name == "Solstice CI" and workflow.fail_fast is True
    assert workflow.triggers == (Trigger("push", ("main", "release/*")), Trigger("pull_request"),
                                 Trigger("tag", tags=("v*",)))
    assert workflow.env == {"RUST_LOG": "info"}
    assert [j.id for j in workflow.jobs] == ["lint", "build", "release"]
    build = workflow.job("build")
    assert build.runs_on == "illumos-${{ matrix.os }}" and build.timeout == 45 * 60
    assert build.needs == ("lint",)
    assert build.if_expr == "branch == 'main' || event == 'pull_request'"
    assert build.resources == Resources(vcpus=4, ram_mb=8192, disk_gb=40)
    assert build.env == {"CARGO_TERM_COLOR": "always"} and build.secrets == ("DEPLOY_KEY",)
    assert build.matrix is not None
    assert build.matrix.axes == (("rust", ("stable", "1.80")), ("os", ("omnios", "openindiana")))
    assert build.matrix.exclude == ({"rust": "1.80", "os": "openindiana"},)
    assert build.matrix.include == ({"rust": "nightly", "os": "omnios"},)
    assert build.setup == ".solstice/setup.sh"
    assert build.steps == (Step("Format", "cargo fmt --check"),
                           Step("Test on ${{ matrix.rust }}", "cargo +${{ matrix.rust }} test --workspace",
                                20 * 60, "event == 'push'"))
    assert build.artifacts == ("target/release/app", "target/release/*.p5p")
    assert build.required_artifacts == ("target/release/*.p5p",)
    release = workflow.job("release")
    assert release.timeout == 5400 and release.if_expr == "tag" and release.needs == ("build",)
    assert release.steps == (Step("cargo build --release",
                                  "cargo build --release\ncp target/release/app out/"),)


def test_kdl1_and_kdl2_spellings_load_the_same() -> None:
    v2 = ('workflow name="w" fail_fast=#true {\n    job id="a" runs_on="x" {\n'
          '        env DEBUG=#false\n        step name="A" run=#"echo "hi""#\n    }\n}\n')
    v1 = v2.replace("#true", "true").replace("#false", "false").replace('run=#"', 'run=r#"')
    assert load_workflow(v1) == load_workflow(v2)


def test_type_annotations_and_numbers_are_read_as_values() -> None:
    text = job('        env PORT=(u16)8080 DEBUG=#false\n        matrix { py 3 "3.12" }\n'
               '        step name="T" run="tox -e py${{ matrix.py }}"')
    built = load_workflow(text).jobs[0]
    assert built.env == {"PORT": "8080", "DEBUG": "false"}
    assert built.matrix is not None and built.matrix.axes == (("py", ("3", "3.12")),)


def test_step_name_defaults_to_the_command() -> None:
    built = load_workflow(job('        step run="make check\nmake install"')).jobs[0]
    assert built.steps[0].name == "make check"


# -- syntax errors --------------------------------------------------------------------------
def test_unclosed_brace_points_at_it() -> None:
    text = 'workflow {\n    job id="a" runs_on="x" {\n        step name="A" run="a"\n}\n'
    diag = only(text, "never closed")
    assert at(diag) == position(text, "{")
    assert "}" in (diag.hint or "")


def test_unterminated_string_points_at_its_quote() -> None:
    text = 'workflow {\n    job id="a" runs_on="x" {\n        step name="A run=a\n    }\n}\n'
    diag = only(text, "unterminated string")
    assert at(diag) == position(text, '"A run')
    assert (diag.job, diag.step) == ("a", None)


def test_bad_value_is_located_in_its_line() -> None:
    text = job('        step name="A" run="a" timeout=1.2.3')
    diag = only(text, "cannot parse `1.2.3`")
    assert at(diag) == position(text, "1.2.3")
    assert (diag.job, diag.step) == ("build", "A")
    assert diag.path == "wf.kdl" and diag.hint


def test_mixing_kdl_versions_is_reported_where_the_second_starts() -> None:
    text = 'workflow fail_fast=#true {\n    job id="a" runs_on=r"x" {\n        step name="A" run="a"\n    }\n}\n'
    diag = only(text, "cannot parse")
    assert diag.line == 2


def test_stray_closing_brace() -> None:
    text = SEED + "\n}\n"
    assert at(only(text, "unexpected `}`")) == (2, 1)


# -- structure ------------------------------------------------------------------------------
def test_empty_file() -> None:
    assert at(only("", "empty")) == (1, 1)
    assert at(only("// just a comment\n", "empty")) == (1, 1)


def test_no_workflow_node_and_stray_top_level_nodes() -> None:
    text = 'job id="a" runs_on="x" { step name="A" run="a" }\n'
    found = diagnostics(text)
    messages = [d.message for d in found]
    assert "`job` must be inside the `workflow` node" in messages
    assert "there is no `workflow` node" in messages


def test_second_workflow_node() -> None:
    text = SEED + "\n" + SEED + "\n"
    assert at(only(text, "second one")) == (2, 1)


def test_empty_workflow() -> None:
    assert at(only("workflow {\n}\n", "no jobs")) == (1, 1)
    assert "no jobs" in only('workflow name="x"', "no jobs").message


def test_job_without_steps() -> None:
    text = 'workflow {\n    job id="a" runs_on="x" {\n        env A="1"\n    }\n}\n'
    diag = only(text, "no steps")
    assert at(diag) == position(text, "job")
    assert diag.job == "a" and "step name=" in (diag.hint or "")


def test_unknown_node_with_suggestion() -> None:
    text = job('        stpe name="Build" run="make"\n' + STEP)
    diag = only(text, "unknown node `stpe` in job")
    assert at(diag) == position(text, "stpe")
    assert "did you mean 'step'?" in (diag.hint or "")


def test_unknown_property_with_suggestion_points_at_the_property() -> None:
    text = job(STEP, props='id="build" runs_on="illumos" runs-on="x"')
    diag = only(text, "unknown property 'runs-on' on job")
    assert at(diag) == position(text, "runs-on")
    assert "did you mean 'runs_on'?" in (diag.hint or "")


def test_step_belongs_in_a_job() -> None:
    text = 'workflow {\n    step name="A" run="a"\n}\n'
    found = diagnostics(text)
    assert any("belongs inside a job" in d.message for d in found)


def test_missing_id_runs_on_and_run() -> None:
    text = ('workflow {\n    job runs_on="x" {\n        step name="A" run="a"\n    }\n'
            '    job id="b" {\n        step name="B"\n    }\n}\n')
    found = diagnostics(text)
    by_message = {d.message: d for d in found}
    assert at(by_message["job has no id"]) == (2, 5)
    assert at(by_message["job has no runs_on"]) == (5, 5)
    missing_run = by_message["step has no run"]
    assert at(missing_run) == (6, 9) and missing_run.job == "b" and missing_run.step == "B"
    assert "run=" in (missing_run.hint or "")


def test_job_given_its_id_as_an_argument() -> None:
    text = 'workflow {\n    job "build" runs_on="x" {\n' + STEP + "\n    }\n}\n"
    found = diagnostics(text)
    assert any('job id="build"' in (d.hint or "") for d in found)


def test_step_arguments_get_quoting_hints() -> None:
    text = job('        step name="A" run=cargo test')
    diag = only(text, "step takes no arguments")
    assert at(diag) == position(text, "test")
    assert 'run="cargo test --workspace"' in (diag.hint or "")
    diag = only(job('        step "Build" run="make"'), "step takes no arguments")
    assert 'step name="Build"' in (diag.hint or "")


def test_step_with_a_block_gets_a_hint() -> None:
    diag = only(job('        step name="A" run="make" { run "make" }'), "no { ... } block")
    assert "run=" in (diag.hint or "")


def test_duplicate_job_ids_point_at_the_second() -> None:
    text = ('workflow {\n    job id="a" runs_on="x" {\n' + STEP + '\n    }\n'
            '    job id="a" runs_on="y" {\n' + STEP + '\n    }\n}\n')
    diag = only(text, "used twice")
    assert at(diag) == position(text, 'id="a"', nth=1)


def test_invalid_job_id() -> None:
    assert only(job(STEP, props='id="a b" runs_on="x"'), "characters ids cannot use")


# -- needs ------------------------------------------------------------------------------
def two_jobs(a_needs: str, b_needs: str = "") -> str:
    return ('workflow {\n'
            f'    job id="build" runs_on="x" {{\n        {a_needs}\n' + STEP + '\n    }\n'
            f'    job id="test" runs_on="x" {{\n        {b_needs}\n' + STEP + '\n    }\n}\n')


def test_needs_unknown_job_with_suggestion() -> None:
    text = two_jobs("", 'needs "biuld"')
    diag = only(text, "needs unknown job 'biuld'")
    assert at(diag) == position(text, '"biuld"')
    assert diag.job == "test" and "did you mean 'build'?" in (diag.hint or "")


def test_job_needing_itself() -> None:
    text = two_jobs('needs "build"')
    assert at(only(text, "needs itself")) == position(text, '"build"', nth=1)


def test_cycle_is_spelled_out() -> None:
    text = two_jobs('needs "test"', 'needs "build"')
    diag = only(text, "dependency cycle")
    assert diag.message == "dependency cycle: build -> test -> build"
    assert at(diag) == position(text, '"test"')


def test_longer_cycle() -> None:
    text = ('workflow {\n'
            + "".join(f'    job id="{a}" runs_on="x" {{\n        needs "{b}"\n{STEP}\n    }}\n'
                      for a, b in (("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")))
            + "}\n")
    assert only(text, "cycle").message == "dependency cycle: a -> b -> c -> a"


def test_long_needs_chain_is_fine() -> None:
    jobs = "".join(f'    job id="j{i}" runs_on="x" {{\n        needs "j{i - 1}"\n{STEP}\n    }}\n'
                   for i in range(1, 1500))
    text = f'workflow {{\n    job id="j0" runs_on="x" {{\n{STEP}\n    }}\n{jobs}}}\n'
    assert len(load_workflow(text).jobs) == 1500


# -- durations, sizes, values --------------------------------------------------------------
@pytest.mark.parametrize("value", ['"45"', '"0s"', '"1h-30m"', "45", '""', "#null"])
def test_bad_job_timeout(value: str) -> None:
    text = job(STEP, props=f'id="a" runs_on="x" timeout={value}')
    diag = only(text, "timeout of job is not a duration")
    assert diag.line == 2 and '"1h30m"' in (diag.hint or "")


def test_bad_step_timeout_points_at_the_value() -> None:
    text = job('        step name="A" run="a" timeout="ten minutes"')
    diag = only(text, "timeout of step is not a duration")
    assert at(diag) == position(text, '"ten minutes"') and diag.step == "A"


def test_durations_and_sizes_convert() -> None:
    text = job('        resources vcpus=2 ram="512M" disk="1T"\n'
               '        step name="A" run="a" timeout="1h30m"\n        step name="B" run="b" timeout="90s"',
               props='id="a" runs_on="x" timeout="2h"')
    built = load_workflow(text).jobs[0]
    assert built.timeout == 7200 and [s.timeout for s in built.steps] == [5400, 90]
    assert built.resources == Resources(vcpus=2, ram_mb=512, disk_gb=1024)


def test_bad_resources_each_reported() -> None:
    text = job('        resources vcpus=0 ram=8 disk="1500M" cpu=2\n' + STEP)
    messages = " | ".join(d.message for d in diagnostics(text))
    assert "vcpus must be a whole number" in messages
    assert "ram is not a size" in messages
    assert "whole gigabytes" in messages
    assert "unknown property 'cpu'" in messages


def test_wrong_value_types() -> None:
    text = 'workflow fail_fast="yes" {\n    job id=5 runs_on="x" {\n' + STEP + '\n    }\n}\n'
    messages = [d.message for d in diagnostics(text)]
    assert "fail_fast must be a boolean, not 'yes'" in messages
    assert "id of job must be a string, not the number 5" in messages


def test_env_and_secret_names() -> None:
    text = job('        env "1BAD"="x" GOOD=#null\n        secrets "DEPLOY-KEY"\n' + STEP)
    messages = " | ".join(d.message for d in diagnostics(text))
    assert "'1BAD' is not a valid environment variable name" in messages
    assert "value of GOOD must be a string" in messages
    assert "'DEPLOY-KEY' is not a valid secrets name" in messages


def test_single_nodes_may_not_repeat() -> None:
    text = job('        setup path="a.sh"\n        setup path="b.sh"\n' + STEP)
    assert at(only(text, "at most one `setup`")) == position(text, "setup", nth=1)


# -- triggers ------------------------------------------------------------------------------
def test_unknown_event_with_suggestion() -> None:
    text = 'workflow {\n    on "pul_request"\n    job id="a" runs_on="x" {\n' + STEP + '\n    }\n}\n'
    diag = only(text, "unknown event 'pul_request'")
    assert at(diag) == position(text, '"pul_request"')
    assert "did you mean 'pull_request'?" in (diag.hint or "")


def test_trigger_patterns() -> None:
    text = ('workflow {\n    on "push" "main" branches="release/*"\n    on "tag" "v*"\n'
            '    job id="a" runs_on="x" {\n' + STEP + '\n    }\n}\n')
    assert load_workflow(text).triggers == (Trigger("push", ("release/*", "main")),
                                            Trigger("tag", tags=("v*",)))
    bad = text.replace('on "tag" "v*"', 'on "tag" branches="main"')
    assert "does not apply to tag events" in only(bad, "branches=").message


# -- matrix and substitution ------------------------------------------------------------
def test_empty_axis_and_empty_matrix() -> None:
    assert only(job('        matrix { os }\n' + STEP), "has no values")
    assert only(job('        matrix {\n        }\n' + STEP), "no axes")


def test_include_and_exclude_naming_unknown_axes() -> None:
    text = job('        matrix {\n            os "a" "b"\n            exclude oss="a"\n'
               '            include os="c" arch="x"\n        }\n' + STEP)
    found = diagnostics(text)
    by_message = {d.message: d for d in found}
    exclude = by_message["exclude names unknown matrix axis 'oss'"]
    assert at(exclude) == position(text, "oss") and "did you mean 'os'?" in (exclude.hint or "")
    assert at(by_message["include names unknown matrix axis 'arch'"]) == position(text, "arch")
    assert len(found) == 2


def test_include_must_name_every_axis_and_exclude_real_values() -> None:
    text = job('        matrix {\n            os "a" "b"\n            rust "1" "2"\n'
               '            include os="c"\n            exclude os="z"\n        }\n' + STEP)
    messages = " | ".join(d.message for d in diagnostics(text))
    assert "missing rust" in messages and "matches nothing" in messages


def test_too_many_combinations() -> None:
    axes = "\n".join(f'            a{i} "x" "y" "z"' for i in range(6))  # 3**6 = 729
    text = job(f"        matrix {{\n{axes}\n        }}\n" + STEP)
    diag = only(text, "makes 729 jobs; at most 256")
    assert at(diag) == position(text, "matrix")
    huge = "\n".join(f'            a{i} "1" "2" "3" "4" "5" "6" "7" "8" "9" "10"' for i in range(8))
    assert only(job(f"        matrix {{\n{huge}\n        }}\n" + STEP), "at most 256")


def test_exclude_may_bring_the_count_under_the_limit() -> None:
    axes = "\n".join(f'            a{i} "x" "y"' for i in range(9))  # 512
    text = job(f'        matrix {{\n{axes}\n            exclude a0="x"\n        }}\n' + STEP)
    assert load_workflow(text).jobs[0].matrix is not None


def test_repeated_axis_value() -> None:
    text = job('        matrix { os "a" "a" }\n' + STEP)
    assert at(only(text, "lists 'a' twice")) == position(text, '"a"', nth=1)


def test_substitution_of_unknown_axis_points_into_the_string() -> None:
    text = job('        matrix { os "a" "b" }\n        step name="A" run="make OS=${{ matrix.oss }}"')
    diag = only(text, "unknown matrix axis 'oss'")
    assert at(diag) == position(text, "${{")
    assert "did you mean 'os'?" in (diag.hint or "")


def test_substitution_without_matrix_and_unsupported_forms() -> None:
    text = job('        step name="A ${{ matrix.os }}" run="echo ${{ secrets.TOKEN }}"',
               props='id="a" runs_on="${{ matrix.os }}"')
    found = diagnostics(text)
    assert sum("has no matrix" in d.message for d in found) == 2
    assert any("unsupported substitution" in d.message for d in found)


# -- conditions -----------------------------------------------------------------------------
def test_job_if_that_does_not_parse_points_at_the_problem() -> None:
    text = job("        if \"branch = 'main'\"\n" + STEP)
    diag = only(text, "condition does not parse")
    assert at(diag) == position(text, "= 'main'")
    assert "==" in (diag.hint or "")


def test_step_if_with_unknown_name() -> None:
    text = job("        step name=\"A\" run=\"a\" if=\"evnt == 'push'\"")
    diag = only(text, "unknown name 'evnt'")
    assert at(diag) == position(text, "evnt")
    assert "did you mean 'event'?" in (diag.hint or "") and diag.step == "A"


def test_if_reading_an_unknown_matrix_axis() -> None:
    text = job('        matrix { os "a" }\n        if "matrix.arch == \'x\'"\n' + STEP)
    assert at(only(text, "unknown matrix axis 'arch'")) == position(text, "matrix.arch")


# -- reporting ------------------------------------------------------------------------------
def test_all_problems_are_reported_together_in_file_order() -> None:
    text = ('workflow {\n    jbo id="x"\n    job id="a" runs_on="x" timeout="soon" {\n'
            '        needs "nope"\n        step name="A"\n    }\n    job id="b" runs_on="y" {\n    }\n}\n')
    found = diagnostics(text)
    assert [d.line for d in found] == sorted(d.line for d in found)
    assert len(found) == 5
    assert all(d.path == "wf.kdl" and d.hint for d in found)


def test_error_positions_with_crlf_line_endings() -> None:
    text = job('        stpe name="A" run="a"\n' + STEP).replace("\n", "\r\n")
    assert at(only(text, "unknown node")) == (3, 9)


def test_workflow_error_is_a_solstice_error_listing_everything() -> None:
    from common.errors import SolsticeError

    with pytest.raises(SolsticeError) as info:
        load_workflow("workflow {\n}\n", "x.kdl")
    assert isinstance(info.value, WorkflowError)
    assert str(info.value).startswith("x.kdl:1:1: error: the workflow has no jobs")


def test_typed_needs_are_checked_like_plain_ones() -> None:
    text = two_jobs("", 'needs (id)"nope"')
    assert at(only(text, "needs unknown job 'nope'")) == position(text, '(id)"nope"')


def test_byte_order_mark_is_not_a_column() -> None:
    text = '\ufeffworkflow { job id="a" runs_on="x" { stp name="a" run="b" } }'
    found = diagnostics(text)
    assert [at(d) for d in found] == [(1, 12), (1, 37)]


def test_problems_after_a_step_are_not_blamed_on_it() -> None:
    text = job('        step name="A" run="a" timeout="x"\n        artifacts 5')
    steps = {d.message.split(":")[0]: d.step for d in diagnostics(text)}
    assert steps == {"timeout of step is not a duration": "A",
                     "arguments of artifacts must be non-empty strings, not the number 5": None}


def test_matrix_values_that_would_make_ambiguous_keys() -> None:
    text = job('        matrix {\n            os "a,b" 1.5\n            include os="x=y"\n        }\n' + STEP)
    found = diagnostics(text)
    assert [d.message for d in found] == ["matrix value 'a,b' cannot be used",
                                          "matrix value the number 1.5 cannot be used",
                                          "include value 'x=y' cannot be used"]
    assert at(found[2]) == position(text, '"x=y"')
    assert "build[os=omnios]" in (found[0].hint or "")


def test_required_artifacts_are_the_patterns_of_required_nodes() -> None:
    workflow = load_workflow(job('        artifacts "a/*" "b" required=#true\n'
                                 '        artifacts "logs/*" required=#false\n'
                                 '        artifacts "c"\n' + STEP))
    build = workflow.job("build")
    assert build.artifacts == ("a/*", "b", "logs/*", "c")
    assert build.required_artifacts == ("a/*", "b")


def test_required_must_be_a_boolean() -> None:
    text = job('        artifacts "a" required="yes"\n        artifacts "b" mandatory=#true\n' + STEP)
    assert [d.message for d in diagnostics(text)] == [
        "required must be a boolean, not 'yes'",
        "unknown property 'mandatory' on artifacts"]
