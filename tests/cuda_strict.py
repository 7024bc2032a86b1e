"""Run every hook of the recorder with CUDA's sync-debug mode at "error".

Every hook dynamics registers (the recorder's optimizer, forward and gradient hooks, the autograd callbacks it
queues, and the attribution's module and tensor hooks) is built by ``HookGuard.wrap(hook, *, no_grad=True)``,
the one guard every part of a recorder uses. Patching ``wrap`` so that each callable it returns runs at
"error" covers them all, including hooks added later. A host synchronisation made by dynamics then raises inside the hook; the recorder reports it in
meta.json ("errors"), which the tests check. ``log`` is called by the user directly and is patched too. The
training loop's own synchronisations (the GradScaler's found-inf check, FSDP's) stay allowed, so the check
isolates dynamics.
"""
from __future__ import annotations

import functools

import torch

from dynamics.record.guard import HookGuard
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


def _strict_wrap(original_wrap):
    @functools.wraps(original_wrap)
    def wrap(self, hook, **options):
        # like the recorder's own guard, never traced by dynamo (the mode switch would break the graph)
        return torch.compiler.disable(_in_error_mode(original_wrap(self, hook, **options)))
    return wrap


def make_hooks_strict(setattr_=setattr) -> None:
    """Patch the hook guard and ``Recorder.log`` (``setattr_`` may be pytest's ``monkeypatch.setattr``); attach
    afterwards."""
    setattr_(HookGuard, "wrap", _strict_wrap(HookGuard.wrap))
    setattr_(Recorder, "log", _in_error_mode(Recorder.log))
