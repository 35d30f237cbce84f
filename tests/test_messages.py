import uuid

import pytest

from common.messages import (
    EventKind,
    JobEvent,
    JobRequest,
    JobState,
    MessageError,
    Repo,
    RunApproval,
    RunRequest,
    decode,
    decode_run_queue,
    encode,
)

REPO = Repo(forge="forgejo", owner="o", name="r", clone_url="https://f/o/r.git")


def test_round_trip() -> None:
    req = RunRequest(request_id="d1", repo=REPO, commit_sha="a" * 40, ref="refs/heads/main",
                     event=EventKind.PUSH, branch="main", workflow_source="workflow {}")
    assert decode(encode(req), RunRequest) == req
    ev = JobEvent(run_id=uuid.uuid4(), job_id=uuid.uuid4(), job_key="b", workflow_name="w",
                  state=JobState.SUCCESS, sequence=3, repo=REPO, commit_sha="a" * 40, request_id="d1")
    assert decode(encode(ev), JobEvent).routing_key == "job.success"


def test_unknown_version_and_garbage_are_message_errors() -> None:
    body = encode(JobRequest(run_id=uuid.uuid4(), job_id=uuid.uuid4(), job_key="a", runs_on="x"))
    with pytest.raises(MessageError, match="schema_version"):
        decode(body.replace(b'"schema_version":1', b'"schema_version":99'), JobRequest)
    with pytest.raises(MessageError, match="malformed"):
        decode(b"{not json", JobRequest)
    with pytest.raises(MessageError, match="runs_on"):
        decode(b'{"schema_version":1,"run_id":"%s","job_id":"%s","job_key":"a"}'
               % (str(uuid.uuid4()).encode(), str(uuid.uuid4()).encode()), JobRequest)


def test_the_runs_queue_carries_requests_and_approvals() -> None:
    approval = RunApproval(request_id="d1", repo=REPO, actor="maintainer", run_id=uuid.uuid4())
    assert decode_run_queue(encode(approval)) == approval
    request = RunRequest(request_id="d2", repo=REPO, commit_sha="a" * 40, ref="refs/heads/main",
                         event=EventKind.PUSH, workflow_source="workflow {}")
    assert decode_run_queue(encode(request)) == request
    for body in (b'{"type": "run_cancel", "schema_version": 1}', b"[]",
                 encode(approval).replace(b'"schema_version":1', b'"schema_version":2')):
        with pytest.raises(MessageError):
            decode_run_queue(body)
