"""`cedm bound`: not yet available in this version."""
from cedm.commands import add_workspace
from cedm.errors import CedmError

HELP = "(bound: not yet available)"


def add_arguments(p) -> None:
    add_workspace(p)


def run(args) -> int:
    raise CedmError("'cedm bound' is not yet available in this version")
