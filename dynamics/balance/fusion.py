"""Where the interventions act: the views' representations at a fusion module's input, and each view's branch.

A fusion module receives either one positional argument per view (``fusion(h_cc, h_mlo)``) or one tensor that
concatenates the views along dimension 1 (``head(torch.cat([h_cc, h_mlo], 1))``). The widths of a concatenation
are given, or read from the output shapes of the views' branch modules at each pass (``observe``), or else
taken to be equal. :class:`FusionInput` splits such arguments into one tensor per view and joins them back.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

Branch = nn.Module | Iterable[nn.Parameter]


class FusionInput:
    """How one fusion module receives the views' representations (see the module docstring)."""

    def __init__(self, module: nn.Module, views: Sequence[str],
                 widths: Mapping[str, int] | Sequence[int] | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"fusion must be an nn.Module (the module whose input holds the views' "
                            f"representations), got {type(module).__name__}")
        self.views = list(views)
        if len(self.views) < 2 or len(set(self.views)) != len(self.views):
            raise ValueError(f"need at least two distinct view names, got {self.views}")
        self.name = type(module).__name__
        self._observed: dict[str, int] = {}
        if widths is None:
            self.widths: list[int] | None = None
        else:
            if isinstance(widths, Mapping):
                if list(widths) != self.views:
                    raise ValueError(f"widths names {list(widths)} must be the views {self.views}, in order")
                widths = list(widths.values())
            self.widths = [int(w) for w in widths]
            if len(self.widths) != len(self.views) or any(w < 1 for w in self.widths):
                raise ValueError(f"widths must be one positive width per view {self.views}, got {widths}")

    def observe(self, branches: Mapping[str, Branch]) -> list:
        """Learn the widths from the branch modules' outputs (dimension 1) at every pass; returns the hook
        handles. Branches given as parameter lists cannot be observed."""
        handles = []
        for view, branch in branches.items():
            if self.widths is None and isinstance(branch, nn.Module):
                def seen(module, args, out, view=str(view)):
                    if isinstance(out, torch.Tensor) and out.dim() >= 2:
                        self._observed[view] = out.shape[1]
                handles.append(branch.register_forward_hook(seen))
        return handles

    def concatenated(self, args: tuple) -> bool:
        """True when the views arrive as one concatenated tensor, False for one argument per view."""
        n = len(self.views)
        if self.widths is not None or len(args) == 1:
            if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() < 2:
                raise ValueError(f"{self.name}: expected the views {self.views} concatenated along dimension 1 "
                                 f"in the first argument, got {_describe(args)}")
            return True
        if len(args) >= n and all(isinstance(a, torch.Tensor) for a in args[:n]):
            return False
        raise ValueError(f"{self.name}: expected one tensor per view {self.views} or one concatenated tensor, "
                         f"got {_describe(args)}")

    def split(self, args: tuple) -> list[torch.Tensor]:
        """One tensor per view, in the order of ``views`` (views of the arguments, never copies)."""
        if not self.concatenated(args):
            return list(args[:len(self.views)])
        x = args[0]
        widths = self.widths
        if widths is None and len(self._observed) == len(self.views):
            widths = [self._observed[v] for v in self.views]
            if sum(widths) != x.shape[1]:
                raise ValueError(f"{self.name}: input width {x.shape[1]} is not the sum of the branches' output "
                                 f"widths {self._observed}; give widths=")
        if widths is None:
            if x.shape[1] % len(self.views):
                raise ValueError(f"{self.name}: input width {x.shape[1]} does not split equally into the views "
                                 f"{self.views}; give widths=")
            widths = [x.shape[1] // len(self.views)] * len(self.views)
        if sum(widths) != x.shape[1]:
            raise ValueError(f"{self.name}: input width {x.shape[1]} is not the sum of the views' widths "
                             f"{dict(zip(self.views, widths))}")
        return list(torch.split(x, widths, dim=1))

    def join(self, args: tuple, parts: Sequence[torch.Tensor]) -> tuple:
        """The arguments with the views' tensors replaced by ``parts``."""
        if self.concatenated(args):
            return (torch.cat(list(parts), dim=1), *args[1:])
        return (*parts, *args[len(self.views):])


def _describe(args: tuple) -> str:
    return "(" + ", ".join(f"tensor{tuple(a.shape)}" if isinstance(a, torch.Tensor) else type(a).__name__
                           for a in args) + ")"


def branch_parameters(branches: Mapping[str, Branch]) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Each view's trainable parameters, with their names inside the branch; errors name the offender."""
    if not isinstance(branches, Mapping) or len(branches) < 2:
        raise ValueError(f"branches must map at least two view names to modules or parameter lists, got "
                         f"{type(branches).__name__}")
    out: dict[str, list[tuple[str, nn.Parameter]]] = {}
    owner: dict[int, str] = {}
    for view, branch in branches.items():
        if isinstance(branch, nn.Module):
            named = list(branch.named_parameters())
        else:
            named = [(str(i), p) for i, p in enumerate(branch)]
            bad = [n for n, p in named if not isinstance(p, torch.Tensor)]
            if bad:
                raise TypeError(f"branch {view!r}: entries {bad} are not parameters")
        named = [(n, p) for n, p in named if p.requires_grad]
        if not named:
            raise ValueError(f"branch {view!r} has no trainable parameter")
        for n, p in named:
            if id(p) in owner:
                raise ValueError(f"parameter {n!r} is in the branches of both {owner[id(p)]!r} and {view!r}: "
                                 f"the interventions need one branch per view (no shared weights)")
            owner[id(p)] = view
        out[str(view)] = named
    return out
