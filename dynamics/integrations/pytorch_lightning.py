"""``DynamicsCallback`` for the older ``pytorch_lightning`` package (same behaviour as
:mod:`dynamics.integrations.lightning`, whose ``Callback`` class a ``pytorch_lightning.Trainer`` would not take).

Needs ``pip install 'dynamics[lightning]'`` (which installs both package names) or ``pytorch_lightning`` itself.
"""
from __future__ import annotations

from ._common import require
from ._lightning import LightningRecording

__all__ = ["DynamicsCallback"]

_pl = require("pytorch_lightning", "lightning", "dynamics.integrations.pytorch_lightning")


class DynamicsCallback(LightningRecording, _pl.Callback):
    __doc__ = LightningRecording.__doc__
