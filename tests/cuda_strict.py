"""Run every hook of the recorder with CUDA's sync-debug mode at "error".

Every hook dynamics registers (the recorder's optimizer, forward and gradient hooks, the autograd callbacks it
queues, and the attribution's module and tensor hooks) is built by ``Recorder._guard(hook, *, no_grad=True)``.
Patching ``_guard`` so that each callable it returns runs at "error" covers them all, including hooks added
later. A host synchronisation made by dynamics then raises inside the hook; the recorder reports it in
meta.json ("errors"), which the tests check. ``log`` is called by the user directly and is patched too. The
training loop's own synchronisations (the GradScaler's found-inf check, FSDP's) stay allowed, so the check
isolates dynamics.
"""
from __future__ import annotations

import functools

import torch

from dynamics.record.recorder import Recorder


def _in_error_mode(function):
    """``function`` run with the sync-debug mode at "error", the previous mode restored afterwards."""
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return function(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return wrapped


def _strict_guard(original_guard):
    @functools.wraps(original_guard)
    def guard(self, hook, *, no_grad=True):
        # like the recorder's own guard, never traced by dynamo (the mode switch would break the graph)
        return torch.compiler.disable(_in_error_mode(original_guard(self, hook, no_grad=no_grad)))
    return guard


def make_hooks_strict(setattr_=setattr) -> None:
    """Patch the Recorder class (``setattr_`` may be pytest's ``monkeypatch.setattr``); attach afterwards."""
    setattr_(Recorder, "_guard", _strict_guard(Recorder._guard))
    setattr_(Recorder, "log", _in_error_mode(Recorder.log))
