"""``DynamicsCallback`` for the Hugging Face ``transformers`` Trainer.

    from dynamics.integrations.huggingface import DynamicsCallback
    callback = DynamicsCallback("runs/gpt-seed0", views={"embeddings": "transformer.wte", "blocks": "transformer.h"})
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()

When training begins the recorder is attached to the Trainer's model and to the torch optimizer inside
Accelerate's ``AcceleratedOptimizer`` (``attach`` unwraps it; its GradScaler, under fp16, is passed on); when it ends the recorder is closed.
The Trainer's loop (accumulate ``gradient_accumulation_steps`` micro-batches, clip to ``max_grad_norm``,
step) is the plain loop the recorder measures: the gradient after accumulation and before clipping, the clip
factor, lca with the unclipped gradient. Needs ``pip install 'dynamics[huggingface]'``.
"""
from __future__ import annotations

import fnmatch
import math
import os
from typing import Any, Sequence

import torch

from ._common import RecorderSession, require, views_by_module_name

__all__ = ["DynamicsCallback"]

_transformers = require("transformers", "huggingface", "dynamics.integrations.huggingface")

# the Trainer's speed figures are no training dynamics
_NOT_LOGGED = ("*_runtime", "*_per_second", "total_flos")


class DynamicsCallback(_transformers.TrainerCallback):
    """Records a ``transformers.Trainer`` run with :func:`dynamics.attach`.

    ``views`` is anything ``attach`` takes; in a dict, a string that names a submodule of the model
    (``"bert.encoder"``) stands for that module, other strings are parameter-name globs (``"bert.encoder.*"``).
    Every other ``attach`` option (``every``, ``condition``, ``seed``, ``config``, ``probe``, ...) is passed on.
    ``log_keys``: which of the numbers the Trainer logs (``on_log``) are logged into the run, as globs; the
    default keeps the training loss, the gradient norm and the evaluation metrics. They are logged at the step
    the Trainer logs them, so ``logging_steps=1`` gives the loss of every step (else the mean over each
    logging window, at its last step). ``recorder`` is the recorder (None on processes other than the first).

    The Trainer has no event for a failed ``train()``: the recorder of a run that raised is closed when
    training begins again (that run is then resumed) or by :meth:`close`.
    """

    def __init__(self, out: str | os.PathLike, views: Any, *,
                 log_keys: Sequence[str] = ("loss", "grad_norm", "eval_*"), **attach_options: Any) -> None:
        self.out, self._views, self._log_keys = out, views, tuple(log_keys)
        self._session = RecorderSession(out, attach_options, "DynamicsCallback")

    @property
    def recorder(self) -> Any:
        """The last recorder (kept after training, for its ``run_dir``; None on processes other than the first)."""
        return self._session.recorder

    def on_train_begin(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise RuntimeError("DynamicsCallback: the Trainer gave the callback no model or optimizer at "
                               "on_train_begin")
        writes = state.is_world_process_zero  # under DDP the first process records, as with plain DDP
        self._session.start(model, optimizer, views_by_module_name(model, self._views) if writes else None,
                            scaler=getattr(optimizer, "scaler", None), writes=writes, agree=_agree)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not self._session.open or not logs:
            return
        self._session.log({key: float(value) for key, value in logs.items()
                           if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                           and any(fnmatch.fnmatchcase(key, g) for g in self._log_keys)
                           and not any(fnmatch.fnmatchcase(key, g) for g in _NOT_LOGGED)})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self, exception: BaseException | None = None) -> None:
        """Flush and close the recorder (an ``exception`` goes into ``meta.json``); safe to call twice."""
        self._session.close(exception)


def _agree(message: str | None) -> str | None:
    """The first process's attach outcome on every process (no process trains on while another stopped)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [message]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]
    return message
