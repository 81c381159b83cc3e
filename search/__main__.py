"""``python -m search`` and the ``hpsearch`` command."""

import sys

from trainables.errors import InputError


def run() -> int:
    try:
        from search.cli import main
    except InputError as error:  # found while importing: a backbone family named in the environment
        print(f"hpsearch: {error}", file=sys.stderr)
        return error.exit_code
    return main()


if __name__ == "__main__":
    sys.exit(run())
