"""The ``cedm`` command line: one subcommand per stage of the data flow.

Each subcommand lives in ``cedm/commands/<name>.py`` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up and turns user errors into one line and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path

from cedm import __version__, hub  # cedm.hub first: it switches library telemetry off before anything loads
from cedm.errors import CedmError

# Order follows the data flow: dataset -> features -> clusters -> model -> samples.
ALLOW_HELP = (f"allow downloading the named pretrained weights (DINO, DINOv2, CLIP, Inception) from the model hub "
              f"into the Hugging Face cache (also {hub.ALLOW_ENV}=1; on by default on a Hugging Face Space; "
              f"offline otherwise)")
COMMANDS = ["import", "features", "ablate-features", "annotate", "cluster", "bound", "labels", "train", "probe",
            "sample", "eval", "workspaces", "serve"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit code 2) instead of the whole usage text."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _module(name: str):
    return importlib.import_module(f"cedm.commands.{name.replace('import', 'import_').replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cedm", description="Label-free conditional image generation (C-EDM).")
    parser.add_argument("--version", action="version", version=f"cedm {__version__}")
    parser.add_argument("--allow-downloads", action="store_true", help=ALLOW_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        mod = _module(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        # also accepted after the subcommand (cedm serve --allow-downloads); SUPPRESS keeps the global value
        p.add_argument("--allow-downloads", action="store_true", default=argparse.SUPPRESS, help=ALLOW_HELP)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.allow_downloads:
        hub.set_allow_downloads(True)
    try:
        with home_for_command(getattr(args, "home", None)):
            return int(args._run(args) or 0)
    except CedmError as e:
        print(f"cedm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cedm {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


@contextlib.contextmanager
def home_for_command(home):
    """``--home`` is the default home for the whole command (what a name like ``denoiser:WS/MODEL``, or a
    worker process, resolves against): $CEDM_HOME for its duration, restored afterwards."""
    if not home:
        yield
        return
    before = os.environ.get("CEDM_HOME")
    os.environ["CEDM_HOME"] = str(Path(home).expanduser().resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CEDM_HOME", None)
        else:
            os.environ["CEDM_HOME"] = before
