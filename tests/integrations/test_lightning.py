"""DynamicsCallback under Lightning's own training loop, against the harness's plain loop (brute force, float64).

Lightning's automatic optimisation runs forward and backward inside ``optimizer.step(closure)``, after the
optimizer's pre-step hook; a recorder that measured the gradient at that hook would record the previous step's
gradient (zero at step 0) and no clip factor. Every test here checks step 0 and the clipped steps against the
plain loop's numbers, so it fails on such a stale gradient. The trained weights are compared too: they show
that Lightning's loop and the plain loop are one computation.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dynamics
from tests.harness import Setup, assert_bit_identical, assert_matches_reference, fresh_model, make_batches, state
from tests.integrations.reference import expected_clip_factor, plain_loop, without_prefix

L = pytest.importorskip("lightning.pytorch")
from dynamics.integrations.lightning import DynamicsCallback  # noqa: E402 - after the skip

STEPS, CLIP = 5, 0.05


class LitTwoView(L.LightningModule):
    """The harness's two-view model and loss in a LightningModule; manual optimisation does what the plain
    loop does (accumulate ``setup.micro`` batches, clip by norm, step)."""

    def __init__(self, model: nn.Module, setup: Setup, manual: bool = False, fail_at: int | None = None) -> None:
        super().__init__()
        self.model, self.setup_ = model, setup
        self.automatic_optimization = not manual
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("the user's training step failed")
        x_cc, x_mlo, y = batch
        loss = ((self.model(x_cc, x_mlo).float() - y) ** 2).mean()
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            self.manual_backward(loss / self.setup_.micro)
            if (batch_idx + 1) % self.setup_.micro == 0:
                if self.setup_.clip is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.setup_.clip, gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad()
        return loss

    def configure_optimizers(self):
        return self.setup_.make_optimizer(self.model)


def _loader(batches):
    """One item per micro-batch, in order (the plain loop's order)."""
    return torch.utils.data.DataLoader([b for micro in batches for b in micro], batch_size=None, shuffle=False)


def _trainer(callback, setup: Setup, manual: bool, **kwargs) -> "L.Trainer":
    automatic = {} if manual else {"accumulate_grad_batches": setup.micro, "gradient_clip_val": setup.clip,
                                   "gradient_clip_algorithm": "norm"}
    options = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
               **automatic, **kwargs}
    return L.Trainer(callbacks=[callback], **options)


def _fit(tmp_path, setup: Setup, *, manual: bool = False, views=None, **trainer_kwargs):
    """Train with Lightning and the callback; returns (module, per_param, per_step, reference, reference loss,
    reference state)."""
    model = fresh_model()
    batches = make_batches(STEPS, setup.micro)
    reference, reference_loss, reference_state = plain_loop(model, setup, batches)
    module = LitTwoView(model, setup, manual=manual)
    if views is None:
        callback = DynamicsCallback(tmp_path / "run", views_of=lambda m: {"cc": m.model.cc, "mlo": m.model.mlo},
                                    flush_every=2)
    else:
        callback = DynamicsCallback(tmp_path / "run", views, flush_every=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(callback, setup, manual, **trainer_kwargs).fit(module, _loader(batches))
    ours = [str(w.message) for w in caught if str(w.message).startswith("dynamics")]
    assert not ours, ours  # a set-up the callback supports raises no warning of the recorder
    assert not dynamics.read_meta(tmp_path / "run")["notes"]
    per_param, per_step = dynamics.load(tmp_path / "run")
    return module, without_prefix(per_param, "model."), per_step, reference, reference_loss, reference_state


def _check(per_param, per_step, reference, reference_loss, setup: Setup, rtol: float = 2e-5) -> None:
    """The record equals the plain loop's brute force at every step (step 0 and the clipped steps named)."""
    step0 = reference[reference["step"] == 0]
    got0 = per_param[per_param["step"] == 0].set_index("param").loc[step0["param"]]
    assert (step0["grad_sq"] > 0).all()
    np.testing.assert_allclose(got0["grad_sq"], step0["grad_sq"], rtol=rtol, err_msg="grad_sq at step 0")
    assert_matches_reference(per_param, reference, rtol=rtol, atol=1e-12)
    steps = per_step.set_index("step")
    np.testing.assert_allclose(steps["loss"], reference_loss, rtol=1e-5, err_msg="logged loss")
    if setup.clip is not None:
        expected = expected_clip_factor(reference, setup.clip)
        clipped = expected[expected < 1].index
        assert len(clipped) >= 2, "the clip must act for the test to mean something"
        np.testing.assert_allclose(steps.loc[clipped, "clip_factor"], expected[clipped], rtol=1e-5,
                                   err_msg="clip_factor")
    else:
        assert steps["clip_factor"].isna().all()


def _sgd(m):
    return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)


def _adamw(m):
    return torch.optim.AdamW(m.parameters(), lr=1e-2)


AUTOMATIC = [
    Setup("accumulate-1", _sgd),
    Setup("accumulate-1-clip", _sgd, clip=CLIP),
    Setup("accumulate-3-clip", _adamw, micro=3, clip=CLIP),
]


@pytest.mark.parametrize("setup", AUTOMATIC, ids=lambda s: s.name)
def test_automatic_optimisation_matches_the_plain_loop(tmp_path, setup):
    module, per_param, per_step, reference, reference_loss, reference_state = _fit(tmp_path, setup)
    assert_bit_identical(state(module.model), reference_state)  # one computation: Lightning's loop and the plain one
    _check(per_param, per_step, reference, reference_loss, setup)
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed" and not meta.get("errors") and not meta["notes"]


def test_manual_optimisation_with_accumulation_and_clipping(tmp_path):
    setup = Setup("manual-accumulate-2-clip", _sgd, micro=2, clip=CLIP)
    module, per_param, per_step, reference, reference_loss, reference_state = _fit(tmp_path, setup, manual=True)
    assert_bit_identical(state(module.model), reference_state)
    _check(per_param, per_step, reference, reference_loss, setup)


def test_bf16_mixed_precision(tmp_path):
    setup = Setup("bf16-mixed-clip", _adamw, micro=2, clip=CLIP, autocast=torch.bfloat16)
    module, per_param, per_step, reference, reference_loss, reference_state = _fit(tmp_path, setup,
                                                                                     precision="bf16-mixed")
    assert_bit_identical(state(module.model), reference_state)
    _check(per_param, per_step, reference, reference_loss, setup)


def test_16_mixed_precision_plugin_with_its_grad_scaler(tmp_path):
    """Lightning turns precision="16-mixed" on the CPU into bf16; its plugin with a GradScaler runs fp16 there."""
    from lightning.pytorch.plugins import MixedPrecision
    setup = Setup("16-mixed-clip", _sgd, micro=2, clip=CLIP, autocast=torch.float16, loss_scale=2.0 ** 16)
    module, per_param, per_step, reference, reference_loss, reference_state = _fit(
        tmp_path, setup, plugins=[MixedPrecision("16-mixed", "cpu")])
    assert_bit_identical(state(module.model), reference_state)
    _check(per_param, per_step, reference, reference_loss, setup)
    assert not reference["skipped"].any()


def test_views_by_module_name_and_glob(tmp_path):
    setup = AUTOMATIC[1]
    _, per_param, per_step, reference, reference_loss, _ = _fit(tmp_path, setup,
                                                                views={"cc": "model.cc", "mlo": "model.mlo.*"})
    _check(per_param, per_step, reference, reference_loss, setup)
    views = per_param.drop_duplicates("param").set_index("param")["view"].astype(str)
    assert views.to_dict() == {n: n.split(".")[0] if n.startswith(("cc.", "mlo.")) else "shared"
                               for n in views.index}


def test_exception_in_training_closes_the_run_and_says_why(tmp_path):
    setup = AUTOMATIC[0]
    callback = DynamicsCallback(tmp_path / "run", views_of=lambda m: {"cc": m.model.cc, "mlo": m.model.mlo})
    module = LitTwoView(fresh_model(), setup, fail_at=3)
    with pytest.raises(RuntimeError, match="training step failed"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(callback, setup, manual=False).fit(module, _loader(make_batches(STEPS)))
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed"
    assert any("training step failed" in e for e in meta["errors"])
    assert dynamics.load(tmp_path / "run")[1]["step"].tolist() == [0, 1, 2]
    assert not module.model.cc[0].weight._backward_hooks  # the recorder's hooks are gone


class WithValidation(LitTwoView):
    def validation_step(self, batch, batch_idx):
        x_cc, x_mlo, y = batch
        self.log("val_loss", ((self.model(x_cc, x_mlo) - y) ** 2).mean())
        self.log("other", 1.0)  # matches no glob of metrics=: stays out of the run


def test_validation_metrics_go_into_the_run_at_the_step_they_follow(tmp_path):
    setup = Setup("manual", _sgd)
    batches, (validation,) = make_batches(STEPS), make_batches(1, seed=7)[0]
    model = fresh_model()
    _, _, reference_state = plain_loop(model, setup, batches)
    callback = DynamicsCallback(tmp_path / "run", {"cc": "model.cc", "mlo": "model.mlo"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(callback, setup, manual=True).fit(WithValidation(model, setup, manual=True), _loader(batches),
                                                   torch.utils.data.DataLoader([validation], batch_size=None))
    trained = fresh_model()
    trained.load_state_dict(reference_state)
    with torch.no_grad():
        expected = float(((trained.eval()(*validation[:2]) - validation[2]) ** 2).mean())
    per_step = dynamics.load(tmp_path / "run")[1].set_index("step")
    assert per_step["val_loss"].dropna().index.tolist() == [STEPS - 1]
    np.testing.assert_allclose(per_step.loc[STEPS - 1, "val_loss"], expected, rtol=1e-6)
    assert "other" not in per_step.columns


class TwoOptimizers(LitTwoView):
    def configure_optimizers(self):
        return [_sgd(self.model.cc), _sgd(nn.ModuleList([self.model.mlo, self.model.head]))]


def test_several_optimizers_are_refused_before_anything_is_written(tmp_path):
    callback = DynamicsCallback(tmp_path / "run", views_of=lambda m: {"cc": m.model.cc, "mlo": m.model.mlo})
    module = TwoOptimizers(fresh_model(), AUTOMATIC[0], manual=True)
    with pytest.raises(NotImplementedError, match="one optimizer; configure_optimizers gave 2"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(callback, AUTOMATIC[0], manual=True).fit(module, _loader(make_batches(STEPS)))
    assert not (tmp_path / "run").exists()


def test_bad_options_fail_when_the_callback_is_made(tmp_path):
    with pytest.raises(TypeError, match="views= .* or views_of="):
        DynamicsCallback(tmp_path / "run")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['evry'\]"):
        DynamicsCallback(tmp_path / "run", ["cc"], evry=2)
    with pytest.raises(TypeError, match="scaler: decided by DynamicsCallback"):
        DynamicsCallback(tmp_path / "run", ["cc"], scaler=None)


def test_a_function_of_the_module_given_as_views_says_to_use_views_of(tmp_path):
    """views= given what views_of= takes: the error at fit start says what a callable views= is and names
    views_of=, and nothing is written."""
    callback = DynamicsCallback(tmp_path / "run", views=lambda m: {"cc": m.model.cc, "mlo": m.model.mlo})
    module = LitTwoView(fresh_model(), AUTOMATIC[0])
    with pytest.raises(TypeError, match=r"views= is a callable, so it maps each parameter name to its view: "
                                        r"views\(name: str\) -> str \| None.*AttributeError.*views_of=f"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(callback, AUTOMATIC[0], manual=False).fit(module, _loader(make_batches(STEPS)))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------ DDP
WORLD, DDP_TIMEOUT_S = 2, 300
DDP_SETUP = Setup("ddp-accumulate-2-clip", _sgd, micro=2, clip=CLIP)


def _ddp_model() -> nn.Module:
    """The harness's model without its BatchNorm (half a batch's statistics differ from the whole batch's)."""
    model = fresh_model()
    model.cc[1] = nn.Identity()
    return model


class HalfBatches(LitTwoView):
    """Each process trains on its half of every batch; DDP's average is the whole batch's gradient."""

    def training_step(self, batch, batch_idx):
        return super().training_step(tuple(t.chunk(WORLD)[self.global_rank] for t in batch), batch_idx)


def _ddp_worker(rank: int, store: str, out: str) -> None:
    """One of the processes (launched by the test, as torchrun would: Lightning sees LOCAL_RANK and joins)."""
    import torch.distributed as dist
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0",
                      MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        module = HalfBatches(_ddp_model(), DDP_SETUP)
        callback = DynamicsCallback(out, views_of=lambda m: {"cc": m.model.cc, "mlo": m.model.mlo})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer(callback, DDP_SETUP, manual=False, devices=WORLD, strategy="ddp",
                     use_distributed_sampler=False).fit(module, _loader(make_batches(STEPS, DDP_SETUP.micro)))
        assert (callback.recorder is None) == (rank != 0)
        if rank == 0:
            torch.save(state(module.model), os.path.join(out, "trained.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, where gloo's threads have been seen to abort the process


def test_ddp_strategy_with_two_processes(tmp_path):
    import time
    import torch.multiprocessing as mp
    out = tmp_path / "run"
    context = mp.start_processes(_ddp_worker, args=(str(tmp_path / "store"), str(out)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + DDP_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the DDP run did not finish within {DDP_TIMEOUT_S} s")
    # rank 0 logs the loss of its own batches, the first half of each
    reference, rank0_loss, reference_state = plain_loop(_ddp_model(), DDP_SETUP, make_batches(STEPS, DDP_SETUP.micro),
                                                        loss_rows=slice(0, 4))
    # the mean of two half-batch gradients against the whole batch's: last bits differ
    torch.testing.assert_close(torch.load(out / "trained.pt"), reference_state, rtol=1e-5, atol=1e-7)
    per_param, per_step = dynamics.load(out)
    _check(without_prefix(per_param, "model."), per_step, reference, rank0_loss, DDP_SETUP, rtol=1e-5)
    meta = dynamics.read_meta(out)
    assert meta["status"] == "closed" and not meta.get("errors")
