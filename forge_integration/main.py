"""Entry point of `solstice-forge-integration`."""
import sys


def main() -> int:
    print("solstice-forge-integration: not built yet in this version of Solstice CI", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
