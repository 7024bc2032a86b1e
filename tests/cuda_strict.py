"""Run every hook of the recorder with CUDA's sync-debug mode at "error".

A host synchronisation made by dynamics then raises inside the hook; the recorder reports it in meta.json
("errors"), which the tests check. The training loop's own synchronisations (the GradScaler's found-inf check,
FSDP's) stay allowed, so the check isolates dynamics.
"""
from __future__ import annotations

import functools

import torch

from dynamics.recorder import Recorder

HOOKS = ("_on_first_grad", "_after_other_callbacks", "_on_backward_end", "_pre_step", "_post_step",
         "_hook_outputs", "_on_forward", "log")


def _strict(method):
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return wrapped


def make_hooks_strict(setattr_=setattr) -> None:
    """Patch the Recorder class (``setattr_`` may be pytest's ``monkeypatch.setattr``); attach afterwards."""
    for name in HOOKS:
        setattr_(Recorder, name, _strict(getattr(Recorder, name)))
