"""`vod-webhook` and `python -m webhook`: the command, or what to install to get it."""

import os
import sys


def main() -> int:
    try:
        from webhook.cli import main as run

        return run()
    except ModuleNotFoundError as missing:
        # The bare install is the subscriber library; commands come with the extras (and import
        # what they need when they run: the SDK only for submit, uvicorn only for serve, ...).
        print(
            f"vod-webhook: this needs the package {missing.name!r}, which this install lacks: "
            "pip install 'vod-webhook[all]' (or the extra it needs: [server], [submit], "
            "[emulator])",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:
        # The reader went away (`vod-webhook replay | head`): nothing of ours failed. Python would
        # still flush stdout at exit and print a traceback; point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
