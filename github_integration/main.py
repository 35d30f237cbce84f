"""Entry point of `solstice-github-integration`."""
import sys


def main() -> int:
    print("solstice-github-integration: not built yet in this version of Solstice CI", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
