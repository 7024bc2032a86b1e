"""Optimizer steps that take a closure, ``optimizer.step(closure)`` (Lightning's automatic optimisation, SAM-style
optimizers, user loops): the forward and backward pass run inside ``step()``, after the optimizer's pre-step
hook. The recorder's pre-step hook therefore hands the optimizer a wrapped closure (a pre-step hook may return
new arguments): the wrapper runs the user's closure, then the recorder's measurement of the gradient, which is
thus the one the closure left (accumulated, and before any clipping done inside the closure, whose change is
undone in lca as for a plain loop). Pure argument handling: the recorder owns what is measured.
"""
from __future__ import annotations

import functools
from typing import Any, Callable


def closure_of(args: tuple, kwargs: dict) -> Callable | None:
    """The closure given to ``optimizer.step`` (``args[0]`` is the optimizer itself), or None."""
    closure = kwargs.get("closure")
    if closure is None and len(args) > 1:
        closure = args[1]
    return closure if callable(closure) else None


def with_closure(args: tuple, kwargs: dict, closure: Callable) -> tuple[tuple, dict]:
    """The step's arguments with ``closure`` in place of the one given (where it was given)."""
    if kwargs.get("closure") is not None:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs


def followed_by(closure: Callable, after: Callable[[], None], failed: Callable[[], None]) -> Callable:
    """``closure`` that calls ``after()`` each time it has returned, and ``failed()`` when it raised (the step
    is then abandoned); its result (the loss) is passed on and its exceptions reach the caller unchanged."""
    @functools.wraps(closure)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            result = closure(*args, **kwargs)
        except BaseException:
            failed()
            raise
        after()
        return result
    return wrapped
