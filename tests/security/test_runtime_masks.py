"""Masks a job adds at run time (`::add-mask::VALUE`, `$SOLSTICE_MASK_FILE`): every form of the
value is masked in everything printed after it, by the runner and again by the orchestrator,
whatever the value and however the output is cut into pieces and chunks.

The property tests drive the runner's `LineMasker` and the orchestrator's `mask_chunk` (the
function `StreamLogs` stores through) with generated values: newlines, JSON and regex
metacharacters, quotes, control characters, non-ASCII letters. The end-to-end tests run real
jobs, and play a runner that does not mask at all.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, quote_plus

import grpc
from hypothesis import given
from hypothesis import strategies as st

from common.masking import ADD_MASK, MASK, MAX_ADDED_MASKS, SecretMasker, secret_pieces
from orchestrator.rpc import mask_chunk
from protos import runner_pb2
from tests.orchestrator.conftest import Factory
from tests.security.test_masking import EXAMPLES, cuts, lines_of, max_lines, noise, values
from tests.security.test_runner_edge import ONE_JOB, PlayerBackend, refused, runners, stored
from workflow_runner.maskfile import MaskFile

multi_line = st.lists(values, min_size=1, max_size=3).map("\n".join)


def pieces(data: bytes, cut_at: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cut_at})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def registered(value: str) -> list[bytes]:
    """What `::add-mask::LINE` registers for each line of `value`."""
    return [line.strip() for line in value.encode().split(b"\n") if len(line.strip()) >= 3]


def commands(value: str) -> bytes:
    return b"".join(ADD_MASK + line + b"\n" for line in value.encode().split(b"\n"))


def printed_forms(value: str, around: tuple[bytes, bytes]) -> tuple[bytes, list[bytes]]:
    """Every form of every registered line, one per output line between `around`."""
    forms, _ = secret_pieces(registered(value))
    return b"".join(around[0] + form + around[1] + b"\n" for form in forms), forms


def runner_then_orchestrator(output: bytes, cut_at: list[int], max_line: int) -> bytes:
    """`output` as the runner masks it (pieces as pipe reads), each piece a chunk carrying the
    masks added meanwhile, stored as the orchestrator masks it again."""
    runner = SecretMasker()
    reported: list[bytes] = []
    lines = runner.line_masker(max_line, on_mask=reported.append)
    session = SimpleNamespace(masker=SecretMasker())
    stored_log = []
    for piece in [*pieces(output, cut_at), None]:
        data = lines.feed(piece) if piece is not None else lines.finish()
        chunk = runner_pb2.LogChunk(data=data, added_masks=reported)
        reported.clear()
        stored_log.append(mask_chunk(session, chunk))  # type: ignore[arg-type]
    return b"".join(stored_log)


def assert_none_of(forms: list[bytes], log: bytes) -> None:
    for form in forms:
        for line in lines_of(form):
            assert line not in log, (line, log)


@EXAMPLES
@given(value=multi_line, before=noise, after=noise, cut_at=cuts, max_line=max_lines)
def test_every_form_of_an_added_value_is_masked_after_the_command(
        value: str, before: bytes, after: bytes, cut_at: list[int], max_line: int) -> None:
    body, forms = printed_forms(value, (before, after))
    log = runner_then_orchestrator(commands(value) + body, cut_at, max_line)
    assert_none_of(forms, log)
    assert log.count(ADD_MASK + MASK) == value.count("\n") + 1


@EXAMPLES
@given(value=values.filter(lambda v: "\n" not in v), prefix=st.binary(max_size=5),
       suffix=st.binary(max_size=5), cut_at=cuts, max_line=max_lines, urlsafe=st.booleans())
def test_an_added_value_is_masked_in_base64_at_every_alignment_and_url_encoded(
        value: str, prefix: bytes, suffix: bytes, cut_at: list[int], max_line: int,
        urlsafe: bool) -> None:
    """`printf 'KEY=%s' "$V" | base64` for the three alignments the value can have in the
    stream, and the value URL-encoded, after `::add-mask::$V` (one line: a multi-line value
    needs a command per line)."""
    raw = value.encode().strip()
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    streams = [encode(prefix + b"k" * offset + raw + suffix) for offset in range(3)]
    urls = [quote(raw, safe="").encode(), quote(raw).encode(), quote_plus(raw).encode()]
    output = ADD_MASK + raw + b"\n" + b"".join(form + b"\n" for form in [*streams, *urls])
    log = runner_then_orchestrator(output, cut_at, max_line)
    for offset, stream in enumerate(streams):
        start = len(prefix) + offset
        # The characters that carry only the value's bits (see common.secret_forms).
        fixed = stream[-(-8 * start // 6):8 * (start + len(raw)) // 6]
        assert fixed not in log, (offset, fixed, log)
    for url in urls:
        assert url not in log, (url, log)


def whole_line_chunks(output: bytes, cut_at: list[int]) -> list[runner_pb2.LogChunk]:
    """`output` in chunks of whole lines, as a runner sends them, cut after random lines."""
    ends = [i + 1 for i, byte in enumerate(output) if byte == ord("\n")]
    chosen = sorted({ends[c % len(ends)] for c in cut_at} | {len(output)})
    return [runner_pb2.LogChunk(data=output[a:b])
            for a, b in zip([0, *chosen], chosen, strict=False)]


def stored_by_orchestrator(chunks: list[runner_pb2.LogChunk]) -> bytes:
    session = SimpleNamespace(masker=SecretMasker())
    return b"".join(mask_chunk(session, chunk) for chunk in chunks)  # type: ignore[arg-type]


@EXAMPLES
@given(value=multi_line, before=noise, cut_at=cuts)
def test_the_orchestrator_catches_a_runner_that_did_not_mask(
        value: str, before: bytes, cut_at: list[int]) -> None:
    """The runner sent its output raw: the orchestrator alone finds the commands and masks."""
    body, forms = printed_forms(value, (before, b""))
    log = stored_by_orchestrator(whole_line_chunks(commands(value) + body, cut_at))
    assert_none_of(forms, log)


@EXAMPLES
@given(value=multi_line, after=noise, cut_at=cuts)
def test_masks_the_runner_reports_reach_the_orchestrator(
        value: str, after: bytes, cut_at: list[int]) -> None:
    """Values from the mask file (nothing in the output says so), printed raw by a runner
    that did not mask: the `added_masks` of the first chunk are enough."""
    body, forms = printed_forms(value, (b"", after))
    chunks = whole_line_chunks(body, cut_at)
    chunks[0].added_masks.extend(registered(value))
    assert_none_of(forms, stored_by_orchestrator(chunks))


def test_command_lines_keep_their_prefix_and_set_x_quotes() -> None:
    masker = SecretMasker()
    got: list[bytes] = []
    lines = masker.line_masker(on_mask=got.append)
    out = lines.feed(b"+ echo '::add-mask::it''s-a-value'\r\n::add-mask::it''s-a-value\n"
                     b"use it''s-a-value \"it''s-a-value\" ::add-mask:: ::add-mask::***\n")
    assert out == (b"+ echo '::add-mask::***\r\n::add-mask::***\n"
                   b"use *** \"***\" ::add-mask::***::add-mask::***\n")
    assert got == [b"it''s-a-value"]


def test_an_over_long_line_holding_a_command() -> None:
    masker = SecretMasker()
    lines = masker.line_masker(16, on_mask=lambda value: None)
    value = b"v" * 40 + b"TAIL-OF-VALUE"
    out = b"".join(lines.feed(piece) for piece in (
        b"x" * 30 + b"::add", b"-mask::" + value[:30], value[30:], b"\nnext " + value + b"\n"))
    assert out == b"x" * 30 + b"::add-mask::***\nnext ***\n"
    # A value longer than any mask may be is hidden up to its newline, and not masked.
    out = b"".join(lines.feed(piece) for piece in (
        b"::add-mask::", b"w" * 5000, b"w" * 10, b"end\nnext line\n")) + lines.finish()
    assert out == b"::add-mask::***\nnext line\n"


def test_limits_on_added_masks() -> None:
    masker = SecretMasker()
    assert not masker.add(b"ab") and not masker.add(b"x" * 5000)
    assert all(masker.add(b"value-%d" % i) for i in range(MAX_ADDED_MASKS))
    assert not masker.add(b"one-too-many")
    assert masker.take_commands(b"::add-mask::one-too-many\n") == b"::add-mask::***\n"
    assert masker.mask(b"value-7 one-too-many") == b"*** one-too-many"


def test_mask_file_takes_whole_lines_then_the_rest_at_the_end(tmp_path: Path) -> None:
    masker = SecretMasker()
    got: list[bytes] = []
    mask_file = MaskFile(tmp_path / "masks", masker, got.append)
    mask_file.path.write_bytes(b"")
    mask_file.poll()
    with mask_file.path.open("ab") as fh:
        fh.write(b"first-value\nsecond-va")
    mask_file.poll()
    assert got == [b"first-value"]
    with mask_file.path.open("ab") as fh:
        fh.write(b"lue")
    mask_file.poll(final=True)
    assert got == [b"first-value", b"second-value"]
    mask_file.path.write_bytes(b"third-value\n")  # truncated and rewritten
    mask_file.poll()
    assert got[-1] == b"third-value"
    # A FIFO or a symlink in its place is neither waited on nor followed.
    mask_file.remove()
    os.mkfifo(mask_file.path)
    mask_file.poll(final=True)
    mask_file.remove()
    (tmp_path / "elsewhere").write_bytes(b"linked-value\n")
    mask_file.path.symlink_to(tmp_path / "elsewhere")
    mask_file.poll(final=True)
    mask_file.remove()
    mask_file.poll()
    assert got == [b"first-value", b"second-value", b"third-value"]


WORKFLOW = r'''
workflow {
    job id="masks" runs_on="local" {
        step name="add" run="V=gen-$(echo 'a{b}.c*d' | tr -d '*')-\"q\"; set -x; echo \"::add-mask::$V\"; set +x; echo \"v=$V\"; printf %s \"$V\" | base64; W=file-value-$$; echo \"$W\" >> \"$SOLSTICE_MASK_FILE\"; echo \"w=$W\"; echo \"$W\" > w.txt; echo \"$V\" > v.txt"
        step name="later" run="echo \"again v=$(cat v.txt) w=$(cat w.txt)\" ; cat w.txt >&2"
    }
}'''  # noqa: E501 (KDL step lines)


async def test_a_job_adds_masks_with_the_real_runner(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory()
    summary = await harness.run(WORKFLOW)
    assert summary.state == "success", summary
    log = await harness.logs(summary.jobs[0].job_id)
    assert b"file-value-" not in log, log
    assert b'gen-a{b}.cd-"q"' not in log and b"Z2Vu" not in log  # nor its base64
    assert b"::add-mask::***" in log and b"v=***" in log and b"w=***" in log
    assert b"again v=*** w=***" in log


async def test_a_runner_that_does_not_mask_is_caught(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(backend_class=PlayerBackend)
    run_id = await harness.submit(ONE_JOB)
    async with grpc.aio.insecure_channel(harness.orchestrator.grpc_url) as channel:
        (runner,) = await runners(harness, channel, 1)
        await runner.stream(
            runner.chunk(1, b"::add-mask::printed-value\nprinted-value\n"),
            runner.chunk(2, b"file=file-only-value\n", added_masks=[b"file-only-value"]),
            runner.chunk(3, b"later printed-value file-only-value\n"))
        details = await refused(runner.stream(runner.chunk(
            4, b"x\n", added_masks=[b"v" * 5000])))
        assert "added_masks" in details
        log = await stored(harness, runner.job_id)
        await harness.api.cancel_run(run_id, "done")
    assert log == b"::add-mask::***\n***\nfile=***\nlater *** ***\n"
