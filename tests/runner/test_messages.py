"""What the real runner says in words: plurals, step numbers, the preloaded tree."""
from __future__ import annotations

import pytest

from protos import runner_pb2
from tests.runner.double import make_job


async def test_one_step_and_one_artifact_in_the_singular(serve, tmp_path) -> None:
    harness = await serve(make_job(("only", "mkdir -p out && printf x > out/a.txt"),
                                   artifact_patterns=["out/*"]))
    code, stderr = await harness.run_runner(tmp_path / "ws")
    assert code == 0, stderr
    assert harness.servicer.result.message == "1 step succeeded, 0 skipped"
    system = harness.servicer.output(-1, runner_pb2.SYSTEM)
    assert b"uploaded 1 artifact file (1 byte)" in system


async def test_an_unnamed_step_is_numbered_from_one(serve, tmp_path) -> None:
    harness = await serve(make_job(("", "exit 2")))
    code, stderr = await harness.run_runner(tmp_path / "ws")
    assert code == 0, stderr
    assert harness.servicer.result.message == "step 'step 1' failed with exit code 2"


@pytest.mark.parametrize("commit, said", [
    ("ab" * 20, f"using the preloaded copy of the working tree (commit {'ab' * 20} plus any "
                "uncommitted changes)"),
    ("", "using the preloaded copy of the working tree (not a git repository)")])
async def test_a_preloaded_tree_is_called_a_copy_of_the_working_tree(
        serve, tmp_path, commit: str, said: str) -> None:
    harness = await serve(make_job(("s", "true"), checkout=runner_pb2.Checkout(
        preloaded=True, commit=commit)))
    code, stderr = await harness.run_runner(tmp_path / "ws")
    assert code == 0, stderr
    assert said in harness.servicer.output(-1, runner_pb2.SYSTEM).decode()
