"""View-wise models: the NYU pre-activation ResNet-22 column (images) or an MLP column (features).

Three architectures (Wu et al., MIDL 2020); the reproduction's named conditions map onto them
(``analyses.conditions``), and a single-view model is the ``separate`` architecture with one view:

- ``separate``: one column per view, attributes ``<view>_column`` (``cc_column``, ``mlo_column``).
- ``shared``: one module ``column`` applied to each view in turn, first view first (CC, then MLO), so one set
  of weights sees both views. For feature views of different widths (mfeat) a per-view linear ``stem``
  (``<view>_stem``) maps each view to the common width first; everything after the stem is shared.
- ``dropout``: separate columns plus modality dropout (``dynamics.balance.ModalityDropout``) on the
  representations before concatenation. In training, each sample independently loses one view's
  representation with probability ``p`` (which view: a fair coin), never both. Rescaling: inverted dropout
  per view — each view is dropped with probability p/2, so every kept representation is multiplied by
  1/(1 − p/2). Its expectation then equals the evaluation-time representation and evaluation needs no
  change (no rescaling in eval mode). With a recorder attached, the counts of present views are logged
  into the run at every step by the dropout module itself.

Every model takes ``inputs = {view: tensor}`` and returns one logit per sample. In training it adds Gaussian
input noise (std 0.01, the NYU setting) to image inputs and records ``last_present = {view: count}``: how many
samples of the last batch had that view present, as device tensors (no host sync).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dynamics.balance import ModalityDropout

ARCHITECTURES = ("separate", "shared", "dropout")


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a (1x1 conv when reshaped) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class ResNet22Column(nn.Module):
    """The NYU per-view column: 7x7/2 conv (16), 3x3/2 max pool, 5 stages x 2 pre-act blocks with strides
    1,2,2,2,2 and widths 16→256 (times ``width``), final BN+ReLU, global average pooling."""

    def __init__(self, width: float = 1.0, in_channels: int = 1) -> None:
        super().__init__()
        chans = [max(1, round(c * width)) for c in (16, 16, 32, 64, 128, 256)]
        self.conv1 = nn.Conv2d(in_channels, chans[0], 7, 2, 3, bias=False)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        for i, stride in enumerate((1, 2, 2, 2, 2)):
            blocks += [PreActBlock(chans[i], chans[i + 1], stride), PreActBlock(chans[i + 1], chans[i + 1], 1)]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(chans[-1])
        self.out_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.pool(self.conv1(x)))
        return torch.relu(self.bn(h)).mean(dim=(2, 3))


class MLPBody(nn.Module):
    """ReLU → Linear(h, h) → ReLU → Linear(h, h) → ReLU: the part of an MLP column after its input layer."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPColumn(nn.Module):
    """Linear(d, h) stem followed by :class:`MLPBody` (three linear layers in all)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, hidden)
        self.body = MLPBody(hidden)
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


class TwoViewModel(nn.Module):
    """Columns per architecture, concatenation, FC(``hidden``)+ReLU, one output logit.

    Two views in the paper's conditions; one view makes the single-view baseline (its head sees one column).
    """

    def __init__(self, views: tuple[str, ...], condition: str, make_column: Callable[[str], nn.Module],
                 *, make_stem: Callable[[str], nn.Module] | None = None, p_drop: float = 0.25,
                 input_noise: float = 0.0, hidden: int = 512) -> None:
        super().__init__()
        if condition not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {condition!r}; choose from {ARCHITECTURES}")
        if not views or len(set(views)) != len(views):
            raise ValueError(f"need one or more distinct view names, got {views}")
        if condition != "separate" and len(views) < 2:
            raise ValueError(f"architecture {condition!r} needs at least two views, got {views}")
        if not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"p_drop must lie in [0, 1], got {p_drop}")
        self.views, self.condition, self.p_drop, self.input_noise = tuple(views), condition, p_drop, input_noise
        if condition == "shared":
            self.column = make_column(views[0])
            if make_stem is not None:
                for v in views:
                    setattr(self, f"{v}_stem", make_stem(v))
            feat = self.column.out_features
        else:
            for v in views:
                setattr(self, f"{v}_column", make_column(v))
            feat = getattr(self, f"{views[0]}_column").out_features
        self.head = nn.Sequential(nn.Linear(len(views) * feat, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.dropout = ModalityDropout(self.views, p_drop) if condition == "dropout" else None
        self.last_present: dict[str, torch.Tensor] = {}

    def represent(self, view: str, x: torch.Tensor) -> torch.Tensor:
        """The representation of one view (the shared column, after the view's stem if there is one)."""
        if self.condition == "shared":
            stem = getattr(self, f"{view}_stem", None)
            return self.column(x if stem is None else stem(x))
        return getattr(self, f"{view}_column")(x)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [v for v in self.views if v not in inputs]
        if missing:
            raise KeyError(f"inputs lack view(s) {missing}; got {sorted(inputs)}")
        reps = []
        for v in self.views:  # fixed order: first view first (call order matters for shared attribution)
            x = inputs[v]
            if self.training and self.input_noise > 0:
                x = x + self.input_noise * torch.randn_like(x)
            reps.append(self.represent(v, x))
        if self.dropout is not None:
            reps = self.dropout(reps)
            self.last_present = self.dropout.last_present
        else:
            self.last_present = {v: torch.ones(r.shape[0], device=r.device).sum() for v, r in zip(self.views, reps)}
        return self.head(torch.cat(reps, dim=1)).squeeze(1)


def nyu_model(condition: str, views: tuple[str, ...] = ("cc", "mlo"), width: float = 1.0, p_drop: float = 0.25,
              input_noise: float = 0.01) -> TwoViewModel:
    """The NYU view-wise model with ResNet-22 columns on single-channel images."""
    return TwoViewModel(views, condition, lambda v: ResNet22Column(width), p_drop=p_drop, input_noise=input_noise)


def mlp_model(condition: str, in_features: dict[str, int], hidden: int = 64, p_drop: float = 0.25) -> TwoViewModel:
    """Two MLP columns on feature views; ``shared`` shares everything after per-view input layers."""
    views = tuple(in_features)
    if condition == "shared":
        return TwoViewModel(views, condition, lambda v: MLPBody(hidden),
                            make_stem=lambda v: nn.Linear(in_features[v], hidden), p_drop=p_drop, hidden=hidden)
    return TwoViewModel(views, condition, lambda v: MLPColumn(in_features[v], hidden), p_drop=p_drop, hidden=hidden)
