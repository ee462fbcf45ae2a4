"""The `adasam` command line: one sub-command per job, each defined next to the code it drives."""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.errors import CommandError, user_errors  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from app import model_commands, serve_commands, workspace_commands

    parser = argparse.ArgumentParser(prog="adasam", description="ADA-SAM Studio: active-learning segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)
    model_commands.register(sub)
    workspace_commands.register(sub)
    serve_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        return code
    except BrokenPipeError:  # the reader went away (`adasam status WS | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot raise again
        return 141
    except Exception as exc:  # the one edge where errors become messages
        if not isinstance(exc, (CommandError, *user_errors())):
            raise
        print(f"adasam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adasam {args.command}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
