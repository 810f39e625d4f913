"""The `plays-consumer` entry point (and `python -m consumer`).

A thin shell around consumer.ops.cli, so that a Ctrl-C that lands while Python
still imports the service (grpc, protobuf and psycopg take a moment) ends in
one line and exit 130, as it does once the command runs, and never in a
KeyboardInterrupt traceback.
"""

import sys

_INTERRUPTED = "plays-consumer: interrupted (Ctrl-C)\n"  # the log format is not read yet


def main() -> int:
    try:
        from consumer.ops.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        sys.stderr.write(_INTERRUPTED)
        return 130


if __name__ == "__main__":
    sys.exit(main())
