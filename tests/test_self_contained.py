"""The repository stands alone: a clone with nothing beside it must pass its tests."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache",
        ".mypy_cache", "build", "dist"}
PATTERN = "../" + "shared"  # split so this file does not match itself


def _tree(root: Path):
    for path in root.iterdir():
        if path.name in SKIP or path.name.endswith(".egg-info"):
            continue
        if path.is_dir():
            yield from _tree(path)
        elif path.is_file():
            yield path


def test_nothing_refers_outside_the_repository() -> None:
    found = [str(p.relative_to(ROOT)) for p in _tree(ROOT)
             if PATTERN.encode() in p.read_bytes()]
    assert not found, f"these files refer to {PATTERN}: {found}"


def test_every_fixture_set_keeps_its_licence() -> None:
    fixtures = ROOT / "tests" / "fixtures"
    for folder, licence in [("forgejo", "LICENSE.woodpecker"), ("gitea", "LICENSE.woodpecker"),
                            ("github", "LICENSE.octokit-webhooks"), ("kdl", "LICENSE.md")]:
        assert (fixtures / folder / licence).is_file(), f"{folder}/ lacks {licence}"
    assert "provenance" in (fixtures / "README.md").read_text()
