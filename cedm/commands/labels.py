"""`cedm labels`: not yet available in this version."""
from cedm.commands import add_workspace
from cedm.errors import CedmError

HELP = "(labels: not yet available)"


def add_arguments(p) -> None:
    add_workspace(p)


def run(args) -> int:
    raise CedmError("'cedm labels' is not yet available in this version")
