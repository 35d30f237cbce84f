"""Entry point of `cidev`."""
import sys


def main() -> int:
    print("cidev: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
