"""`cedm sample`: not yet available in this version."""
from cedm.errors import CedmError

HELP = "(sample: not yet available)"


def add_arguments(p) -> None:
    p.add_argument("model", help="model folder")


def run(args) -> int:
    raise CedmError("'cedm sample' is not yet available in this version")
