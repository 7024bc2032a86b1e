"""``DynamicsCallback`` for PyTorch Lightning (the ``lightning`` package, ``import lightning.pytorch``).

    from dynamics.integrations.lightning import DynamicsCallback
    callback = DynamicsCallback("runs/baseline-seed0", views_of=lambda m: {"cc": m.model.cc, "mlo": m.model.mlo})
    lightning.pytorch.Trainer(callbacks=[callback], ...).fit(module, data)

Needs ``pip install 'dynamics[lightning]'``. For the older ``pytorch_lightning`` package use
:mod:`dynamics.integrations.pytorch_lightning`. What the callback does: :mod:`dynamics.integrations._lightning`.
"""
from __future__ import annotations

from ._common import require
from ._lightning import LightningRecording

__all__ = ["DynamicsCallback"]

_pl = require("lightning.pytorch", "lightning", "dynamics.integrations.lightning")


class DynamicsCallback(LightningRecording, _pl.Callback):
    __doc__ = LightningRecording.__doc__
