"""Fault injection for the recorder: skipped last steps, grad modes, interrupts, a full disk, and misuse.

The promises under test: no error of the recorder reaches the training loop (it warns, stops and writes the
error to meta.json); close() never raises for the recorder's own failures and keeps what it measured; an
interrupt or exception inside ``with`` propagates unchanged after the flush; misuse (an optimizer without the
model's parameters, a second recorder, a misspelt view, parameter groups added later) is an error or a loud
note naming the thing; attribution under activation checkpointing is exact or refused, never swapped.
"""
import copy
import os
import signal
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

import dynamics
from tests.harness import fresh_model, make_batches

N_TENSORS = len(list(fresh_model().parameters()))


def _loss(model, x_cc, x_mlo, y):
    return ((model(x_cc, x_mlo) - y) ** 2).mean()


def _attach(model, out, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return optimizer, dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=out, **kwargs)


def _train(model, optimizer, rec, steps, seed=1, log=True):
    for micro in make_batches(steps, seed=seed):
        for x_cc, x_mlo, y in micro:
            loss = _loss(model, x_cc, x_mlo, y)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if log:
            rec.log(loss=loss)


# ------------------------------------------------------------------------- grad mode of the caller
@pytest.mark.parametrize("mode", ["plain", "no_grad", "inference_mode", "enable_grad"])
def test_skipped_last_step_is_kept_whatever_the_grad_mode_of_close(tmp_path, mode):
    """The loop zeroes the gradients of its last backward without stepping (an AMP skip, or the loop's own):
    close() records that step as skipped, keeps every step before it, and raises nothing."""
    model = fresh_model()
    optimizer, rec = _attach(model, tmp_path / "run")  # default flush_every: everything is still buffered
    _train(model, optimizer, rec, 5)
    [(x_cc, x_mlo, y)] = make_batches(1, seed=7)[0]
    _loss(model, x_cc, x_mlo, y).backward()
    optimizer.zero_grad()
    context = {"plain": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
               "enable_grad": torch.enable_grad}[mode]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failure would warn
        with context():
            rec.close()
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == list(range(6))
    assert per_step["skipped"].tolist() == [False] * 5 + [True]
    assert len(per_param) == 6 * N_TENSORS
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed" and not meta.get("errors")


class _Shared(nn.Module):
    """One column for both views, with a view-specific input layer (so a checkpoint's inputs need grad)."""

    def __init__(self, checkpoint: str = "none") -> None:
        super().__init__()
        self.cc_in, self.mlo_in = nn.Linear(5, 4), nn.Linear(5, 4)
        self.column = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6))
        self.head = nn.Linear(12, 1)
        self.checkpoint = checkpoint

    def represent(self, x, detached=False):
        if detached:  # the reference: this call carries no gradient to the column's weights
            return functional_call(self.column, {n: p.detach() for n, p in self.column.named_parameters()}, (x,))
        from torch.utils.checkpoint import checkpoint, checkpoint_sequential
        if self.checkpoint == "reentrant":
            return checkpoint(self.column, x, use_reentrant=True)
        if self.checkpoint == "non_reentrant":
            return checkpoint(self.column, x, use_reentrant=False)
        if self.checkpoint == "reentrant_inside":  # the column's input is computed inside the checkpoint
            return checkpoint(lambda h: self.column(h * 1.0), x, use_reentrant=True)
        if self.checkpoint.startswith("sequential"):
            return checkpoint_sequential(self.column, 2, x, use_reentrant=self.checkpoint.endswith("reentrant"))
        return self.column(x)

    def forward(self, a, b, detach=None):
        h_cc = self.represent(self.cc_in(a), detach == "cc")
        h_mlo = self.represent(self.mlo_in(b), detach == "mlo")
        return self.head(torch.cat([h_cc, h_mlo], 1)).squeeze(1)


def _shared_batches(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.randn(8, generator=g))
            for _ in range(steps)]


@pytest.mark.parametrize("mode", ["plain", "no_grad", "inference_mode"])
def test_log_flush_after_a_skipped_step_with_attribution_never_raises(tmp_path, monkeypatch, mode):
    """log() flushes its pending scalars when there are many: after a skipped step closed by the next forward
    pass (attribution's hook, in grad mode), and whatever the grad mode around log()."""
    from dynamics.record import logs
    monkeypatch.setattr(logs, "MAX_PENDING", 3)
    torch.manual_seed(0)
    model = _Shared()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                          out=tmp_path / "run")
    context = {"plain": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, (a, b, y) in enumerate(_shared_batches(6)):
            loss = ((model(a, b) - y) ** 2).mean()
            loss.backward()
            if step != 2:
                optimizer.step()
            optimizer.zero_grad()
            with context():
                rec.log(loss=loss, twice=loss * 2)
        rec.close()
    _, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == list(range(6)) and per_step["loss"].notna().all()
    assert per_step["skipped"].tolist() == [False, False, True, False, False, False]


def test_amp_skip_mid_run_with_attribution_loses_nothing(tmp_path):
    """A skipped step in mid-run (gradients reset without a step), with shared-weight attribution: no warning
    during training, every step kept at close (the default flush_every)."""
    torch.manual_seed(0)
    model = _Shared()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                              out=tmp_path / "run")
        for step, (a, b, y) in enumerate(_shared_batches(6)):
            ((model(a, b) - y) ** 2).mean().backward()
            if step != 2:
                optimizer.step()
            optimizer.zero_grad()
        rec.close()
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == list(range(6))
    assert per_step["skipped"].tolist() == [False, False, True, False, False, False]
    assert per_param.loc[per_param["attributed"], "step"].nunique() == 6
    assert not dynamics.read_meta(tmp_path / "run").get("errors")


# ------------------------------------------------------------------------------------- interrupts
@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a library earlier in the process may have replaced it (Lightning
    ignores SIGINT after an interrupted fit), and then the signal below would not raise at all."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_inside_with_propagates_unchanged_after_the_flush(tmp_path, ctrl_c_raises):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = make_batches(51)
    with pytest.raises(KeyboardInterrupt) as raised:
        with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "run") as rec:
            for step, [(x_cc, x_mlo, y)] in enumerate(batches):
                _loss(model, x_cc, x_mlo, y).backward()
                if step == 50:  # the unlucky moment: gradients reset, the step not taken
                    optimizer.zero_grad()
                    os.kill(os.getpid(), signal.SIGINT)
                optimizer.step()
                optimizer.zero_grad()
                rec.log(loss=1.0)
    assert type(raised.value) is KeyboardInterrupt and raised.value.__context__ is None
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist()[:50] == list(range(50)) and len(per_step) in (50, 51)
    assert per_param.groupby("step").size().eq(N_TENSORS).all()
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed" and "KeyboardInterrupt" in meta["errors"][0]


def test_exception_inside_with_propagates_unchanged_even_when_close_fails(tmp_path, monkeypatch):
    from dynamics import store
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def full(self, frames):
        raise OSError(28, "No space left on device")
    full_disk = pytest.warns(RuntimeWarning, match="No space left")
    with full_disk, pytest.raises(ValueError, match="the user's own") as raised:
        with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "run") as rec:
            _train(model, optimizer, rec, 3)
            monkeypatch.setattr(store.RunWriter, "commit", full)
            raise ValueError("the user's own")
    assert raised.value.__context__ is None
    meta = dynamics.read_meta(tmp_path / "run")
    assert any("ValueError" in e for e in meta["errors"]) and any("No space left" in e for e in meta["errors"])


# -------------------------------------------------------------------------------------- full disk
def _fill(folder, keep=4096):
    """Fill the file system of ``folder`` up to ``keep`` free bytes with a ballast file; return it."""
    ballast = folder / "ballast"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(free - keep, 0))
    return ballast


def _mounted_tmpfs(mount, size) -> bool:
    """Mount a tmpfs of ``size`` at ``mount``: only as root, and not when DYNAMICS_TEST_NO_TMPFS is set (to run
    the fallback)."""
    if os.geteuid() != 0 or os.environ.get("DYNAMICS_TEST_NO_TMPFS"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs when this process may mount one), else None (the tests then make
    writes fail as on a full disk)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not _mounted_tmpfs(mount, "2m"):
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _disk_fills(small_disk, tmp_path, monkeypatch):
    """Where to write, and a function that makes the disk full (or writes fail as on a full disk)."""
    if small_disk is not None:
        return small_disk, lambda: _fill(small_disk)
    from dynamics import store

    def full(self, frames):
        raise OSError(28, "No space left on device")

    def fill():
        monkeypatch.setattr(store.RunWriter, "commit", full)
        return None
    return tmp_path, fill


def test_disk_full_in_log_flush_never_reaches_the_loop_and_close_keeps_what_it_can(tmp_path, small_disk,
                                                                                   monkeypatch):
    from dynamics.record import logs
    root, fill = _disk_fills(small_disk, tmp_path, monkeypatch)
    monkeypatch.setattr(logs, "MAX_PENDING", 4)  # log() flushes often
    model = fresh_model()
    optimizer, rec = _attach(model, root / "run", flush_every=3)
    _train(model, optimizer, rec, 6)
    ballast = fill()
    with pytest.warns(RuntimeWarning, match="No space left"):
        _train(model, optimizer, rec, 6, seed=2)   # neither the hooks' flush nor log()'s raises into the loop
    if ballast is not None:
        ballast.unlink()  # space again by the time of close: the steps measured before the failure are kept
    else:
        monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec.close()
    per_param, per_step = dynamics.load(root / "run")
    assert per_step["step"].tolist()[:6] == list(range(6))
    assert per_param.groupby("step").size().eq(N_TENSORS).all()
    meta = dynamics.read_meta(root / "run")
    assert meta["status"] == "closed" and any("No space left" in e for e in meta["errors"])


def test_close_on_a_still_full_disk_warns_and_never_raises(tmp_path, small_disk, monkeypatch):
    root, fill = _disk_fills(small_disk, tmp_path, monkeypatch)
    model = fresh_model()
    optimizer, rec = _attach(model, root / "run", flush_every=3)
    _train(model, optimizer, rec, 4)
    fill()
    with pytest.warns(RuntimeWarning, match="No space left"):
        _train(model, optimizer, rec, 4, seed=2)
        rec.close()  # must not raise, even though nothing more can be written
    rec.close()
    per_param, per_step = dynamics.load(root / "run")  # what was committed before the disk filled
    assert per_step["step"].tolist()[:3] == [0, 1, 2]


# -------------------------------------------------------------------------------------------- misuse
def test_optimizer_without_the_models_parameters_is_an_error_naming_it(tmp_path):
    model, other = fresh_model(), fresh_model(1)
    optimizer = torch.optim.Adam(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer .*Adam.* holds none of the model's .*parameters"):
        dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_second_recorder_on_the_same_model_or_optimizer_is_an_error_naming_it(tmp_path):
    model = fresh_model()
    optimizer, first = _attach(model, tmp_path / "first")
    with pytest.raises(RuntimeError, match=r"model .*TwoView is already recorded by an open recorder .*first"):
        _attach(model, tmp_path / "second")
    with pytest.raises(RuntimeError, match=r"model .*Sequential is already recorded \(as part of .*TwoView, which"):
        dynamics.attach(model.cc, torch.optim.SGD(model.cc.parameters(), lr=0.1), views={"cc": model.cc[0]},
                        out=tmp_path / "third")  # a part of it
    other = fresh_model(1)
    optimizer.add_param_group({"params": list(other.parameters())})
    with pytest.raises(RuntimeError, match=r"optimizer .*SGD.* is already recorded .*first"):
        dynamics.attach(other, optimizer, views={"cc": other.cc}, out=tmp_path / "fourth")
    first.close()
    _, again = _attach(model, tmp_path / "fifth")  # closed: the model may be recorded again
    again.close()


def test_view_in_attribute_that_views_does_not_declare_is_an_error_naming_it(tmp_path):
    torch.manual_seed(0)
    model = _Shared()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"attribute=.*'mloo'.*not in views="):
        dynamics.attach(model, optimizer, views={"cc": model.cc_in, "mlo": model.mlo_in},
                        attribute={model.column: ["cc", "mloo"]}, out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"'MLO'"):
        dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "MLO"]},
                        out=tmp_path / "run")


def test_parameter_group_added_after_attach_is_noted_loudly(tmp_path):
    """Progressive unfreezing: the head joins the optimizer at step 3. It is not recorded (the parameter table
    is fixed at attach); the recorder says so at that step, and meta.json no longer calls it frozen."""
    model = fresh_model()
    for p in model.head.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([*model.cc.parameters(), *model.mlo.parameters()], lr=0.1)
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "run")
    batches = make_batches(6)
    for step, [(x_cc, x_mlo, y)] in enumerate(batches):
        if step == 3:
            for p in model.head.parameters():
                p.requires_grad_(True)
            optimizer.add_param_group({"params": list(model.head.parameters()), "lr": 0.01})
            expect = pytest.warns(RuntimeWarning, match=r"parameter group 1 .*head\.weight.* not recorded")
        else:
            expect = warnings.catch_warnings()
        with expect:
            _loss(model, x_cc, x_mlo, y).backward()
            optimizer.step()
            optimizer.zero_grad()
    rec.close()
    meta = dynamics.read_meta(tmp_path / "run")
    [(note, steps)] = [(k, v) for k, v in meta["notes"].items() if "parameter group 1" in k]
    assert steps == [3] and "head.weight" in note
    assert "head.weight" not in meta["frozen"]
    _, per_step = dynamics.load(tmp_path / "run")
    assert per_step["lr_1"].isna().tolist() == [True] * 3 + [False] * 3  # its learning rate is recorded


# ------------------------------------------------------------------------- activation checkpointing
def _reference_parts(model, batches):
    """Per step, each view's gradient of the column (the other view's call detached), with plain autograd."""
    params = dict(model.column.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rows = []
    for step, (a, b, y) in enumerate(batches):
        parts = {}
        for view, other in (("cc", "mlo"), ("mlo", "cc")):
            loss = ((model(a, b, detach=other) - y) ** 2).mean()
            grads = torch.autograd.grad(loss, list(params.values()))
            parts[view] = [g.double() for g in grads]
        for i, name in enumerate(params):
            g_cc, g_mlo = parts["cc"][i], parts["mlo"][i]
            rows += [{"step": step, "param": f"column.{name}", "view": "cc", "grad_sq": float((g_cc ** 2).sum()),
                      "cross": float((g_cc * g_mlo).sum())},
                     {"step": step, "param": f"column.{name}", "view": "mlo", "grad_sq": float((g_mlo ** 2).sum()),
                      "cross": float((g_cc * g_mlo).sum())}]
        ((model(a, b) - y) ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return pd.DataFrame(rows).set_index(["step", "param", "view"]).sort_index()


# checkpointing, what is attributed (the column, or its two linear blocks), and what must happen
CHECKPOINTS = {
    "checkpoint(column), reentrant": ("reentrant", "column", "exact"),
    "checkpoint(column), non-reentrant": ("non_reentrant", "column", "exact"),
    "checkpoint_sequential, reentrant, blocks attributed": ("sequential_reentrant", "blocks", "exact"),
    "checkpoint_sequential, non-reentrant, blocks attributed": ("sequential_non_reentrant", "blocks", "exact"),
    "checkpoint_sequential, reentrant, the Sequential attributed": ("sequential_reentrant", "column", "refused"),
    "checkpoint_sequential, non-reentrant, the Sequential attributed": ("sequential_non_reentrant", "column",
                                                                        "refused"),
    "reentrant, the column's input computed inside the checkpoint": ("reentrant_inside", "column", "refused"),
}


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_attribution_under_activation_checkpointing_is_exact_or_refused(tmp_path, case):
    how, attributed, outcome = CHECKPOINTS[case]
    torch.manual_seed(0)
    model = _Shared(how)
    reference = copy.deepcopy(model)
    reference.checkpoint = "none"
    batches = _shared_batches(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    modules = [model.column] if attributed == "column" else [model.column[0], model.column[2]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={m: ["cc", "mlo"] for m in modules},
                              out=tmp_path / "run")
        for a, b, y in batches:
            ((model(a, b) - y) ** 2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        rec.close()
    meta = dynamics.read_meta(tmp_path / "run")
    refused = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    per_param, _ = dynamics.load(tmp_path / "run")
    if outcome == "refused":  # loudly, naming the module and the cause, and nothing wrong is recorded
        assert refused and "'column'" in refused[0] and any("checkpoint" in e for e in meta["errors"])
        assert not per_param["attributed"].any()
        return
    assert not refused and not meta.get("errors") and not any("matched no view" in n for n in meta["notes"])
    assert not any("outside the attributed calls" in n for n in meta["notes"])
    got = (per_param[per_param["attributed"]].astype({"param": str, "view": str})
           .set_index(["step", "param", "view"])[["grad_sq", "cross"]].sort_index())
    expected = _reference_parts(reference, batches)
    assert list(got.index) == list(expected.index)
    for column in ("grad_sq", "cross"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-5, atol=1e-12, err_msg=column)
