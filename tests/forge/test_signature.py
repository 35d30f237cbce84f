"""Webhook signatures: the forges' formats, GitHub's documented vector, refusals."""
from common.forge.signature import sign, verify_any, verify_forgejo, verify_github

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_documented_vector() -> None:
    assert sign(GITHUB_SECRET, GITHUB_BODY, prefix="sha256=") == GITHUB_SIGNATURE
    assert verify_github(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE)


def test_forgejo_is_bare_hex_of_the_same_hmac() -> None:
    bare = GITHUB_SIGNATURE.removeprefix("sha256=")
    assert verify_forgejo(GITHUB_SECRET, GITHUB_BODY, bare)
    assert verify_forgejo(GITHUB_SECRET, GITHUB_BODY, bare.upper())
    assert not verify_forgejo(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE)
    assert not verify_github(GITHUB_SECRET, GITHUB_BODY, bare)


def test_refusals() -> None:
    good = sign("s3cret", b"{}")
    assert not verify_forgejo("s3cret", b"{} ", good)  # one byte more
    assert not verify_forgejo("other", b"{}", good)
    assert not verify_forgejo("s3cret", b"{}", None)
    assert not verify_forgejo("s3cret", b"{}", "")
    assert not verify_forgejo("", b"{}", sign("", b"{}"))  # an empty secret signs nothing
    assert not verify_forgejo("s3cret", b"{}", "zz\u00e9" + good[3:])  # non-ASCII does not crash
    assert not verify_forgejo("s3cret", b"{}", good[:-1])


def test_any_of_several_secrets() -> None:
    signature = sign("new", b"body")
    assert verify_any(["old", "new"], b"body", signature)
    assert not verify_any(["old"], b"body", signature)
    assert not verify_any([], b"body", signature)
