"""Subcommands of the ``cedm`` command line (see cedm/cli.py)."""


def add_home(p) -> None:
    p.add_argument("--home", default=None,
                   help="folder that holds the workspaces (default: $CEDM_HOME or the per-user data folder)")


def add_device(p) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")


def add_workspace(p) -> None:
    p.add_argument("workspace", help="workspace name ('demo' for the shipped demo) or folder")
    add_home(p)
