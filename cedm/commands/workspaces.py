"""`cedm workspaces`: list, show or delete workspaces."""
from cedm import workspace as wsp
from cedm.commands import add_home

HELP = "list workspaces, show one, or delete one"


def add_arguments(p) -> None:
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "delete"])
    p.add_argument("name", nargs="?", help="workspace name (for show/delete)")
    add_home(p)


def run(args) -> int:
    if args.action == "list":
        for name in wsp.list_workspaces(args.home):
            ws = wsp.open_workspace(args.home, name)
            print(f"{name}\t{ws.n} images\t{ws.resolution}px\t{ws.root}")
        return 0
    if not args.name:
        from cedm.errors import CedmError
        raise CedmError(f"'{args.action}' needs a workspace name")
    if args.action == "show":
        ws = wsp.open_workspace(args.home, args.name)
        for k, v in sorted(ws.manifest.items()):
            print(f"{k}: {v}")
        return 0
    wsp.delete_workspace(args.home, args.name)
    print(f"deleted workspace {args.name!r}")
    return 0
