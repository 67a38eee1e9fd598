"""`cedm import`: not yet available in this version."""
from cedm.commands import add_home
from cedm.errors import CedmError

HELP = "(import: not yet available)"


def add_arguments(p) -> None:
    p.add_argument("source")
    add_home(p)


def run(args) -> int:
    raise CedmError("'cedm import' is not yet available in this version")
