"""Entry point of `solstice-orchestrator`."""
import sys


def main() -> int:
    print("solstice-orchestrator: not built yet in this version of Solstice CI", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
