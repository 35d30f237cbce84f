"""SecretMasker: exact, streaming-safe at any chunk boundary, fast on big logs."""
from __future__ import annotations

import base64
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from common.masking import MASK, MIN_SECRET_LENGTH, SecretMasker
from protos import runner_pb2
from tests.runner.double import make_job
from workflow_runner.agent import job_masker

ALPHABET = b"abcxyz01 \n"
secret_text = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b))


def stream(masker: SecretMasker, pieces: list[bytes], max_line: int = 65536) -> bytes:
    lines = masker.line_masker(max_line)
    return b"".join(lines.feed(p) for p in pieces) + lines.finish()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=False)]


def test_masks_every_occurrence_longest_first():
    masker = SecretMasker(["hunter2", "hunter2-extended"])
    assert masker.mask(b"pw=hunter2-extended and hunter2\n") == b"pw=*** and ***\n"


def test_multi_line_secret_is_masked_line_by_line():
    key = "-----BEGIN KEY-----\n  abcdef123\r\nzzzz9999\n-----END KEY-----\n"
    masker = SecretMasker([key])
    out = masker.mask(b"    abcdef123\n\tzzzz9999 tail\n")
    assert out == b"    ***\n\t*** tail\n"


def test_short_values_are_not_masked_and_counted():
    masker = SecretMasker(["ab", "x", "", "abc"])
    assert MIN_SECRET_LENGTH == 3
    assert masker.too_short == 2
    assert masker.mask(b"ab abc x\n") == b"ab *** x\n"


def test_no_secrets_is_identity():
    masker = SecretMasker([])
    assert not masker
    assert stream(masker, [b"a\nb", b"c"]) == b"a\nbc"


def test_partial_line_is_held_until_its_newline():
    lines = SecretMasker(["s3cr3t"]).line_masker()
    assert lines.feed(b"one\nthe value is s3c") == b"one\n"
    assert lines.feed(b"r3t!\n") == b"the value is ***!\n"
    assert lines.finish() == b""


def test_over_long_line_is_emitted_early_but_still_masked():
    lines = SecretMasker(["s3cr3t"]).line_masker(max_line=16)
    out = lines.feed(b"x" * 40 + b"s3c")
    assert out and b"s3c" not in out and len(out) <= 43 - 5
    out += lines.feed(b"r3t" + b"y" * 5)
    out += lines.finish()
    assert out == b"x" * 40 + MASK + b"y" * 5


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(secret_text, min_size=1, max_size=4),
       text=st.lists(st.one_of(secret_text, st.sampled_from([b"\n", b"s", b"  "])), max_size=30),
       inserts=st.lists(st.integers(min_value=0, max_value=3), max_size=30),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
       max_line=st.integers(min_value=1, max_value=40))
def test_any_chunking_gives_the_same_masked_stream(secrets, text, inserts, cuts, max_line):
    """Feeding the stream in arbitrary pieces equals masking it whole, and no secret line
    that is long enough survives in the output."""
    masker = SecretMasker(secrets)
    pieces = [secrets[i % len(secrets)] for i in inserts]
    padded = pieces + [b""] * len(text)
    data = b"".join(t + p for t, p in zip(text, padded, strict=False)) + b"".join(pieces[len(text):])
    expected = masker.mask(data)
    assert stream(masker, split(data, cuts), max_line) == expected
    for secret in secrets:
        for line in secret.splitlines():
            if len(line.strip()) >= MIN_SECRET_LENGTH:
                assert line.strip() not in expected


def test_masks_a_million_lines_quickly():
    masker = SecretMasker(["tok-123456", "another-secret-value", "pem-line-abcdef"])
    block = b"".join(b"line %d with some text tok-123456 more\n" % i for i in range(1000))
    lines = masker.line_masker()
    started = time.perf_counter()
    total = 0
    for _ in range(1000):
        total += len(lines.feed(block))
    elapsed = time.perf_counter() - started
    assert total > 0 and elapsed < 5, elapsed


async def test_the_runner_refuses_an_artifact_holding_a_secret(serve, tmp_path):
    """Scanned before the upload: the file holding a form of the secret is not sent, the log
    names it without the value, the other file is uploaded and the job fails."""
    secret = "art1fact-s3cret"
    job = make_job(("build", "mkdir -p out && echo fine > out/ok.txt && "
                             "printf %s \"$K\" | xxd -p > out/hex.txt"),
                   secrets={"K": secret}, artifact_patterns=["out/*"])
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert sorted(s.artifacts) == ["out/ok.txt"]
    assert s.result.outcome == runner_pb2.JOB_FAILURE
    assert s.result.message == "artifacts refused because they contain a secret: out/hex.txt"
    assert b"artifact out/hex.txt not uploaded: it contains a secret" in s.output(-1)
    assert secret.encode() not in s.output()


def test_verbatim_values_are_masked_as_they_are_only():
    """The runner token: masked as is, not in derived forms (no step is given it)."""
    masker = SecretMasker(["s3cret-value"], verbatim=["tok-abcdef123"])
    assert masker.mask(b"tok-abcdef123 s3cret-value\n") == b"*** ***\n"
    assert masker.mask(base64.b64encode(b"s3cret-value") + b"\n") == b"***\n"
    assert masker.mask(base64.b64encode(b"tok-abcdef123") + b"\n") != b"***\n"
    assert job_masker(make_job(("x", "true"), secrets={"K": "s3cret-value"}),
                      "tok-abcdef123").mask(b"tok-abcdef123\n") == b"***\n"
