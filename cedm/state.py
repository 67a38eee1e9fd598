"""Training state as flat safetensors dicts: prefixed groups of tensors and an optimizer's state.

One place for what a resumable loop (C-EDM training, TEMI) writes into its checkpoint file: nothing here is
pickled, so a checkpoint is read back with safetensors alone.
"""
from __future__ import annotations

import torch


def prefixed(prefix: str, sd: dict) -> dict:
    """{'<prefix>.<name>': tensor} of a state dict."""
    return {f"{prefix}.{k}": v for k, v in sd.items()}


def unprefixed(prefix: str, tensors: dict) -> dict:
    """The state dict stored under ``prefix`` by :func:`prefixed`."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, list]:
    """Optimizer state -> flat {'optim.<param>.<key>': tensor} + JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, sd["param_groups"]


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    """Restore what :func:`optimizer_to_tensors` gave (the optimizer moves each state to its parameter's
    device)."""
    state: dict = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
