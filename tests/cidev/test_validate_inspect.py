"""`cidev validate` and `cidev inspect`: exit statuses, human and machine output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cidev.main import COMMANDS, main
from tests.fixtures import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
FULL = ROOT / "examples" / "full.kdl"
FOREIGN = FIXTURES / "kdl" / "examples" / "ci.kdl"
BROKEN = '''workflow {
    job id="build" runs_on="x" {
        stpe name="Build" run="make"
        step name="Test" run="make test" timeout="soon"
    }
}
'''
DIAMOND = '''workflow {
    job id="a" runs_on="x" { step name="a" run="a"; }
    job id="b" runs_on="x" { needs "a"; step name="b" run="b"; }
    job id="c" runs_on="x" { needs "a"; step name="c" run="c"; }
    job id="d" runs_on="y" { needs "b" "c"; step name="d" run="d"; }
}
'''


def write(tmp_path: Path, text: str | bytes, name: str = "workflow.kdl") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_commands_are_registered_from_one_tuple() -> None:
    assert all(hasattr(module, "register") for module in COMMANDS)


def test_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(FULL)]) == 0
    assert capsys.readouterr().out.strip() == f"{FULL}: ok (3 jobs, 6 after matrix expansion)"


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert f"no .solstice/workflow.kdl in {tmp_path} or any directory above it" in err
    assert "hint:" in err
    (tmp_path / ".solstice").mkdir()
    (tmp_path / ".solstice" / "workflow.kdl").write_text(FULL.read_text())
    assert main(["validate"]) == 0


def test_the_workflow_is_found_from_a_subdirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".solstice").mkdir()
    (tmp_path / ".solstice" / "workflow.kdl").write_text(FULL.read_text())
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert main(["validate"]) == 0
    assert capsys.readouterr().out.startswith("../../.solstice/workflow.kdl: ok (3 jobs,")
    assert main(["inspect"]) == 0
    assert "workflow 'Solstice CI'" in capsys.readouterr().out


def test_a_directory_means_its_solstice_workflow(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".solstice").mkdir()
    (tmp_path / ".solstice" / "workflow.kdl").write_text('workflow { job id="a" runs_on="x" {'
                                                         ' step name="a" run="a"; }; }')
    assert main(["validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{tmp_path / '.solstice' / 'workflow.kdl'}: ok (1 job, 1 after matrix expansion)"


def test_a_closed_pipe_ends_validate_quietly(tmp_path: Path) -> None:
    """`cidev validate --json ... | head`: the reader leaves after one line, cidev is still
    writing (far more than a pipe holds)."""
    paths = [str(FULL)] * 2000
    proc = subprocess.Popen([sys.executable, "-m", "cidev.main", "validate", "--json", *paths],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"{\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141)
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored"


def test_invalid_file_reads_like_a_compiler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BROKEN)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:9: error: unknown node `stpe` in job [job 'build']" in err
    assert "    3 |         stpe name=" in err
    assert "      |         ^" in err
    assert "  hint: did you mean 'step'?" in err
    assert f"{path}:4:50: error: timeout of step is not a duration: 'soon' [job 'build', step 'Test']" in err
    assert err.rstrip().endswith(f"{path}: 2 errors")


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BROKEN)
    assert main(["validate", "--json", str(path), str(FULL)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    broken, full = report["files"]
    assert full == {"path": str(FULL), "valid": True, "errors": [], "jobs": 3, "planned_jobs": 6}
    assert broken["valid"] is False
    assert broken["errors"][1] == {
        "path": str(path), "line": 4, "col": 50, "job": "build", "step": "Test",
        "message": "timeout of step is not a duration: 'soon'",
        "hint": 'write hours, minutes and seconds like "45m", "1h30m" or "90s"',
    }


def test_missing_file_among_others_is_a_usage_error(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(FULL), str(tmp_path / "nope.kdl")]) == 2
    assert "nope.kdl: no such file" in capsys.readouterr().err
    assert main(["validate", "--json", str(tmp_path / "nope.kdl")]) == 2
    record = json.loads(capsys.readouterr().out)["files"][0]
    assert "no such file" in record["usage_error"] and record["hint"]


def test_directory_without_a_workflow_is_a_usage_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path)]) == 2
    assert f"{tmp_path} is a directory without .solstice/workflow.kdl" in capsys.readouterr().err


def test_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, b'workflow {\n  job id="\xff"\n}\n')
    assert main(["validate", str(path)]) == 1
    assert f"{path}:2:11: error: the file is not UTF-8 (byte 0xff)" in capsys.readouterr().err


def test_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'workflow {\n    job id="a" runs_on="x" {\n        step name="A" run="a"\n')
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2:28: error: `{{` is never closed" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "validate" in capsys.readouterr().err


def test_inspect_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(FULL)]) == 0
    out = capsys.readouterr().out
    assert "workflow 'Solstice CI'  (fail_fast)" in out
    assert "  on: push [main, release/*], pull_request, tag [v*]" in out
    assert "jobs (6, in run order):" in out
    assert "  build[rust=nightly,os=omnios]  runs_on=illumos-omnios  timeout=45m" in out
    assert "    2. Test on nightly: cargo +nightly test --workspace  (timeout=20m; if: event == 'push')" in out
    assert "    1. cargo build --release: cargo build --release ..." in out
    assert out.split("dag:\n", 1)[1].splitlines() == [
        "  lint",
        "  ├── build[rust=stable,os=omnios]",
        "  │   └── release",
        "  ├── build[rust=stable,os=openindiana]",
        "  │   └── release (see above)",
        "  ├── build[rust=1.80,os=omnios]",
        "  │   └── release (see above)",
        "  └── build[rust=nightly,os=omnios]",
        "      └── release (see above)",
    ]


def test_inspect_dag_draws_shared_jobs_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(write(tmp_path, DIAMOND))]) == 0
    dag = capsys.readouterr().out.split("dag:\n", 1)[1]
    assert dag.splitlines() == ["  a", "  ├── b", "  │   └── d", "  └── c", "      └── d (see above)"]


def test_inspect_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--dot", str(write(tmp_path, DIAMOND))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph workflow {") and out.rstrip().endswith("}")
    assert '  "b" -> "d";' in out and '  "c" -> "d";' in out
    assert '"d" [label="d\\ny"];' in out


def test_inspect_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(write(tmp_path, BROKEN))]) == 1
    assert "unknown node `stpe`" in capsys.readouterr().err


def test_foreign_dialect_through_the_installed_command() -> None:
    """Another tool's CI file in KDL: rejected with located, actionable errors, no traceback."""
    cidev = Path(sys.executable).with_name("cidev")
    result = subprocess.run([str(cidev), "validate", str(FOREIGN)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{FOREIGN}:3:1: error: unknown top-level node `name`" in result.stderr
    assert f"{FOREIGN}:11:1: error: unknown top-level node `jobs`" in result.stderr
    assert "there is no `workflow` node" in result.stderr
    assert result.stderr.count("hint:") == result.stderr.count(": error: ")
