"""Every form of a secret is masked, whatever the value and however the output is chunked.

Each test generates secret values (quotes, backslashes, spaces and tabs, newlines, JSON and
regex metacharacters, control characters, non-ASCII letters), prints them the way a tool does
(bash itself for `set -x` and unquoted expansion; the standard library's encoders for the
rest), cuts the output into random pieces and feeds them through `LineMasker`. No value holds
`*`: `***` next to a partly masked `*` could spell the value again by accident.
"""
from __future__ import annotations

import base64
import binascii
import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from common.masking import MIN_SECRET_LENGTH, SecretMasker, secret_pieces
from common.messages import JobState
from orchestrator.updates import LogUpdate
from protos import runner_pb2
from tests.joblog import stored_chunks
from workflow_runner.artifact_scan import holds_secret

SPECIALS = "'\"\\ \t\n\r{}[]().+?^$|/:%=&#~!`;<>,@\x01\x1b\x7f"
char = st.one_of(
    st.sampled_from(SPECIALS),
    st.characters(categories=("L", "N", "P", "S", "Zs", "Mn"), exclude_characters="*",
                  max_codepoint=0x2FFF))
# At least 5 bytes besides surrounding whitespace: every form of such a value is masked
# (shorter values keep their raw and quoted forms only; see `MIN_ENCODED_LENGTH`).
values = st.text(char, min_size=5, max_size=30).filter(
    lambda v: len(v.encode().strip()) >= 5 and "Q7Z" not in v)
noise = st.text(st.sampled_from("ab01 =:/\"'\t"), max_size=8).map(str.encode)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=10)
max_lines = st.integers(min_value=1, max_value=80)
EXAMPLES = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def stream(masker: SecretMasker, data: bytes, cut_at: list[int], max_line: int) -> bytes:
    """`data` through one `LineMasker`, in the pieces `cut_at` makes."""
    points = sorted({c % (len(data) + 1) for c in cut_at})
    lines = masker.line_masker(max_line)
    out = b"".join(lines.feed(data[a:b]) for a, b in zip([0, *points], [*points, len(data)],
                                                         strict=True))
    return out + lines.finish()


def lines_of(form: bytes) -> list[bytes]:
    """The parts of `form` that must not survive: its stripped lines long enough to mask."""
    parts = (line.strip() for line in form.splitlines())
    return [p for p in parts if len(p) >= MIN_SECRET_LENGTH]


def assert_masked(output: bytes, forms: list[bytes]) -> None:
    for form in forms:
        for line in lines_of(form):
            assert line not in output, (line, output)


def check(value: str, render: Callable[[bytes], bytes], cut_at: list[int], max_line: int,
          around: tuple[bytes, bytes] = (b"", b"")) -> None:
    """`render(value)` printed between `around` on one line is masked at any chunking, and
    streaming gives what masking the whole output at once gives."""
    raw = value.encode()
    masker = SecretMasker([value])
    data = around[0] + render(raw) + around[1] + b"\n"
    output = stream(masker, data, cut_at, max_line)
    assert output == masker.mask(data)
    assert_masked(output, [render(raw)])


# -- set -x and unquoted expansion, as bash prints them -------------------------------------

SCRIPT = """set -x
: Q7ZA "$S" Q7ZB
: Q7ZA $S Q7ZB
set +x
echo Q7ZA $S Q7ZB
"""


def rendered_by_bash(output: bytes) -> list[bytes]:
    """What bash printed between the markers, without the quotes around the whole word
    (text around an expansion joins them, so the inside is what must be masked)."""
    found = []
    for piece in output.split(b"Q7ZA ")[1:]:
        inner = piece.split(b" Q7ZB")[0]
        inner = inner.removeprefix(b"$'").removeprefix(b"'").removesuffix(b"'")
        found.append(inner)
    return found


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("empty")  # unquoted $S globs here: nothing to match


@EXAMPLES
@given(value=values.filter(lambda v: all(len(line.strip()) >= MIN_SECRET_LENGTH
                                         for line in v.encode().splitlines() if line.strip())),
       locale=st.sampled_from(["C", "C.UTF-8"]), cut_at=cuts, max_line=max_lines)
def test_set_x_and_unquoted_echo_as_bash_prints_them(empty_dir: Path, value: str, locale: str,
                                                      cut_at: list[int], max_line: int) -> None:
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", SCRIPT], cwd=empty_dir,
                          env={"S": value, "LC_ALL": locale, "PATH": "/usr/bin:/bin"},
                          capture_output=True, check=True)
    renderings = rendered_by_bash(done.stderr) + rendered_by_bash(done.stdout)
    assert len(renderings) == 3, done
    masker = SecretMasker([value])
    for data in (done.stdout, done.stderr):
        assert_masked(stream(masker, data, cut_at, max_line), renderings)


def test_set_x_forms_of_a_quote_and_a_control_character() -> None:
    masker = SecretMasker(["it's  a\x01pass"])
    assert masker.mask(b"+ echo 'it'\\''s  a\x01pass'\n") == b"+ echo '***'\n"
    assert masker.mask(b"+ echo 'it'\\''s' $'a\\001pass'\n") == b"+ echo '***'\n"
    assert masker.mask(b"it's a\x01pass\n") == b"***\n"


# -- encodings ------------------------------------------------------------------------------

@EXAMPLES
@given(value=values, urlsafe=st.booleans(), padded=st.booleans(), before=noise, after=noise,
       cut_at=cuts, max_line=max_lines)
def test_base64_standalone(value: str, urlsafe: bool, padded: bool, before: bytes,
                           after: bytes, cut_at: list[int], max_line: int) -> None:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    check(value, lambda raw: encode(raw) if padded else encode(raw).rstrip(b"="), cut_at,
          max_line, (before, after))


@EXAMPLES
@given(value=values, urlsafe=st.booleans(), prefix=st.binary(max_size=8),
       suffix=st.binary(max_size=8), cut_at=cuts, max_line=max_lines)
def test_base64_of_a_longer_stream_holding_the_value(value: str, urlsafe: bool, prefix: bytes,
                                                     suffix: bytes, cut_at: list[int],
                                                     max_line: int) -> None:
    """`printf 'KEY=%s\\n' "$S" | base64`: the characters that carry only bits of the value
    are masked, at each of the three alignments."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    raw = value.encode()
    encoded = encode(prefix + raw + suffix)
    first_bit, end_bit = 8 * len(prefix), 8 * (len(prefix) + len(raw))
    inside = encoded[-(-first_bit // 6):end_bit // 6]  # characters whose 6 bits are the value's
    masker = SecretMasker([value])
    output = stream(masker, b"data: " + encoded + b"\n", cut_at, max_line)
    assert inside not in output


@EXAMPLES
@given(value=values, variant=st.sampled_from(["lower", "upper", "od"]), before=noise,
       after=noise, cut_at=cuts, max_line=max_lines)
def test_hex(value: str, variant: str, before: bytes, after: bytes, cut_at: list[int],
             max_line: int) -> None:
    render = {"lower": binascii.hexlify, "upper": lambda raw: binascii.hexlify(raw).upper(),
              "od": lambda raw: binascii.hexlify(raw, b" ")}[variant]  # xxd -p, .hex(), od
    check(value, render, cut_at, max_line, (before, after))


@EXAMPLES
@given(value=values, variant=st.sampled_from(["quote", "quote/", "quote_plus"]), cut_at=cuts,
       max_line=max_lines)
def test_url_encoded(value: str, variant: str, cut_at: list[int], max_line: int) -> None:
    render = {"quote": lambda raw: quote(raw, safe="").encode(),
              "quote/": lambda raw: quote(raw).encode(),
              "quote_plus": lambda raw: quote_plus(raw).encode()}[variant]
    check(value, render, cut_at, max_line, (b"GET https://example.org/?a=1&token=", b"&b=2"))


@EXAMPLES
@given(value=values, ascii_only=st.booleans(), cut_at=cuts, max_line=max_lines)
def test_json_escaped(value: str, ascii_only: bool, cut_at: list[int], max_line: int) -> None:
    masker = SecretMasker([value])
    data = json.dumps({"user": "ci", "token": value, "n": 1}, ensure_ascii=ascii_only).encode()
    output = stream(masker, data + b"\n", cut_at, max_line)
    assert_masked(output, [json.dumps(value, ensure_ascii=ascii_only)[1:-1].encode()])


@EXAMPLES
@given(value=values, in_dict=st.booleans(), cut_at=cuts, max_line=max_lines)
def test_python_repr(value: str, in_dict: bool, cut_at: list[int], max_line: int) -> None:
    masker = SecretMasker([value])
    shown = repr({"API_KEY": value} if in_dict else value).encode()  # print(os.environ)
    output = stream(masker, b"environ: " + shown + b"\n", cut_at, max_line)
    assert_masked(output, [repr(value)[1:-1].encode()])


@EXAMPLES
@given(value=values, cut_at=cuts, max_line=max_lines)
def test_whitespace_folded_by_unquoted_echo(value: str, cut_at: list[int],
                                            max_line: int) -> None:
    check(value, lambda raw: b" ".join(raw.split()), cut_at, max_line, (b"+ ", b""))


# -- lines, streams ------------------------------------------------------------------------

@EXAMPLES
@given(lines=st.lists(values.map(lambda v: v.replace("\n", "").replace("\r", "")),
                      min_size=2, max_size=5),
       indent=st.sampled_from([b"", b"  ", b"\t"]), crlf=st.booleans(), cut_at=cuts,
       max_line=max_lines)
def test_each_line_of_a_multi_line_value(lines: list[str], indent: bytes, crlf: bool,
                                         cut_at: list[int], max_line: int) -> None:
    masker = SecretMasker(["\n".join(lines) + "\n"])
    end = b"\r\n" if crlf else b"\n"
    data = b"".join(indent + line.encode() + end for line in reversed(lines))
    assert_masked(stream(masker, data, cut_at, max_line), [line.encode() for line in lines])


@EXAMPLES
@given(value=values, split=st.integers(min_value=1, max_value=200), before=noise,
       cut_out=cuts, cut_err=cuts, max_line=max_lines)
def test_a_value_split_between_stdout_and_stderr(value: str, split: int, before: bytes,
                                                 cut_out: list[int], cut_err: list[int],
                                                 max_line: int) -> None:
    """Each stream is masked on its own: neither holds a whole form of the value (what the
    two halves spell together is the documented limit, docs/SECURITY.md)."""
    raw = value.encode()
    split = split % (len(raw) - 1) + 1
    masker = SecretMasker([value])
    pieces, _ = secret_pieces([value])
    out = stream(masker, before + raw[:split], cut_out, max_line)
    err = stream(masker, raw[split:] + b"\n", cut_err, max_line)
    for piece in pieces:
        assume(piece not in before)
        assert piece not in out and piece not in err


# -- artifacts ------------------------------------------------------------------------------

@EXAMPLES
@given(value=values, form=st.integers(min_value=0), before=st.binary(max_size=300),
       after=st.binary(max_size=300), block=st.integers(min_value=1, max_value=64))
def test_artifact_scan_finds_any_form_across_blocks(tmp_path: Path, value: str, form: int,
                                                    before: bytes, after: bytes,
                                                    block: int) -> None:
    masker = SecretMasker([value])
    pieces, _ = secret_pieces([value])
    path = tmp_path / "artifact.bin"
    path.write_bytes(before + pieces[form % len(pieces)] + after)
    assert holds_secret(path, masker, block_bytes=block)
    path.write_bytes(before + after)
    assert holds_secret(path, masker, block_bytes=block) == masker.contains(before + after)


def test_a_secret_longer_than_the_recursion_limit() -> None:
    value = "k" * 5000 + "-tail"
    masker = SecretMasker([value])
    assert masker.mask(b"x" + base64.b64encode(value.encode()) + b"\n") == b"x***\n"


def test_set_x_of_bytes_that_are_not_utf8(empty_dir: Path) -> None:
    value = b"ab\xffcd\x01"
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", SCRIPT], cwd=empty_dir,
                          env={b"S": value, b"LC_ALL": b"C.UTF-8"}, capture_output=True,
                          check=True)
    assert b"$'ab\\377cd\\001'" in done.stderr
    masker = SecretMasker([value])
    for data in (done.stdout, done.stderr):
        assert_masked(masker.mask(data), rendered_by_bash(data))


# -- end to end: the real runner and orchestrator ---------------------------------------------

API_KEY = "it's  a \"s3cr3t\" \\ välue"  # a quote, a run of spaces, JSON and shell specials
CTRL_KEY = "c7rl\x01word\tvalue"  # set -x prints its first word as $'c7rl\001word'
PYTHON_FORMS = ('import json, os, urllib.parse as u; k = os.environ["API_KEY"]; '
                'print(u.quote(k), u.quote(k, safe=""), u.quote_plus(k)); '
                'print(json.dumps({"k": k})); print(json.dumps({"k": k}, ensure_ascii=False))')
STEPS = {
    "set -x": 'set -x; echo "$API_KEY"; : x${API_KEY}y; : $CTRL_KEY; echo "$CTRL_KEY"',
    "unquoted": "echo $API_KEY; echo $CTRL_KEY",
    "base64": "printf %s \"$API_KEY\" | base64 -w0; echo; "
              "printf 'KEY=%s;' \"$API_KEY\" | base64 -w0; echo",
    "hex": "printf %s \"$API_KEY\" | xxd -p; printf %s \"$API_KEY\" | od -An -tx1 -w64",
    "url and json": f"python3 -c {shlex.quote(PYTHON_FORMS)}",
    "artifacts": "mkdir -p out && echo fine > out/clean.txt && "
                 "printf 'KEY=%s\\n' \"$API_KEY\" > out/leak.env && "
                 "printf %s \"$API_KEY\" | base64 > out/leak.b64",
}
FORMS_STEPS = "\n".join(f"        step name={json.dumps(name)} run={json.dumps(run)}"
                        for name, run in STEPS.items())
SPLIT = 'printf %s "${API_KEY:0:9}"; printf \'%s\\n\' "${API_KEY:9}" >&2'
E2E_WORKFLOW = f"""
workflow {{
    job id="forms" runs_on="local" {{
        secrets "API_KEY" "CTRL_KEY"
        artifacts "out/*"
{FORMS_STEPS}
    }}
    job id="split" runs_on="local" {{
        secrets "API_KEY"
        step name="split" run={json.dumps(SPLIT)}
    }}
}}"""


async def test_every_form_is_masked_end_to_end(orchestrator_factory) -> None:
    harness = await orchestrator_factory(secrets={"API_KEY": API_KEY, "CTRL_KEY": CTRL_KEY})
    updates: list[LogUpdate] = []
    with harness.api.watch(kinds=(LogUpdate,)) as watch:
        summary = await harness.run(E2E_WORKFLOW)
        while not watch.queue.empty():
            updates.append(watch.queue.get_nowait())
    forms = next(j for j in summary.jobs if j.key == "forms")
    stored = await harness.logs(forms.job_id)
    live = [u.data for u in updates if u.job_id == forms.job_id]
    raw = API_KEY.encode()
    embedded = base64.b64encode(b"KEY=" + raw + b";")
    for log in (stored, b"".join(live)):
        assert b"+ echo '***'" in log and b"\n***\n" in log, log.decode()
        for leak in (b"s3cr3t", b"c7rl", base64.b64encode(raw), embedded[6:len(embedded) - 4],
                     binascii.hexlify(b"s3cr3t"), binascii.hexlify(b"s3cr3t", b" ")):
            assert leak not in log, (leak, log.decode())
    # The artifact holding the secret is refused, the job fails, the other file is uploaded.
    assert forms.state == JobState.FAILURE, stored.decode()
    assert "refused because they contain a secret: out/leak.b64, out/leak.env" in forms.message
    assert b"artifact out/leak.env not uploaded: it contains a secret" in stored
    paths = await harness.orchestrator.db.pool.fetch(
        "SELECT path FROM artifacts WHERE job_id = $1", forms.job_id)
    assert [r["path"] for r in paths] == ["out/clean.txt"]
    # Split between stdout and stderr: neither stream holds the value whole.
    split = next(j for j in summary.jobs if j.key == "split")
    for stream in (runner_pb2.STDOUT, runner_pb2.STDERR):
        output = b"".join(c.data for c in await stored_chunks(harness.orchestrator, split.job_id)
                          if c.stream == stream)
        assert output and raw not in output
