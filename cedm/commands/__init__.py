"""Subcommands of the ``cedm`` command line (see cedm/cli.py)."""


def add_home(p) -> None:
    p.add_argument("--home", default=None,
                   help="folder that holds the workspaces (default: $CEDM_HOME or the per-user data folder)")


def add_device(p) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")


def add_workspace(p) -> None:
    p.add_argument("workspace", help="workspace name ('demo' for the shipped demo) or folder")
    add_home(p)


def add_config_arguments(p, cls, skip=()) -> None:
    """One flag per field of the config dataclass ``cls`` (``--field-name``, or the field's ``flag`` metadata),
    typed from its annotation, with its help text and choices from the field's metadata and its default shown
    from the dataclass: the default lives only there. Booleans get ``--name/--no-name``. Every flag defaults
    to None (= not given), so :func:`config_from_args` keeps the dataclass's own default."""
    import argparse
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        text = meta.pop("help")
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        if kind is bool:
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                           help=f"{text} (default: {'on' if f.default else 'off'})")
            continue
        shown = "" if f.default is None or "(default" in text else f" (default: {f.default})"
        p.add_argument(flag, dest=f.name, type=kind, default=None, help=text + shown, **meta)


def config_from_args(cls, args, **fixed):
    """``cls`` from the flags :func:`add_config_arguments` made: given flags (not None) and ``fixed`` values
    override the dataclass defaults."""
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**{**given, **fixed})
