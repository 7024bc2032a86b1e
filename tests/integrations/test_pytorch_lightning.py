"""The same callback for the older ``pytorch_lightning`` package, under its own Trainer (automatic optimisation
with accumulation and norm clipping), against the plain loop's brute force."""
from __future__ import annotations

import warnings

import pytest
import torch

import dynamics
from tests.harness import Setup, assert_bit_identical, fresh_model, make_batches, state
from tests.integrations.reference import plain_loop, without_prefix

pl = pytest.importorskip("pytorch_lightning")
from dynamics.integrations.pytorch_lightning import DynamicsCallback  # noqa: E402 - after the skip
from tests.integrations.test_lightning import CLIP, STEPS, _check, _loader  # noqa: E402

SETUP = Setup("accumulate-2-clip", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), micro=2,
              clip=CLIP)


class TwoView(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x_cc, x_mlo, y = batch
        return ((self.model(x_cc, x_mlo) - y) ** 2).mean()

    def configure_optimizers(self):
        return SETUP.make_optimizer(self.model)


def test_pytorch_lightning_trainer(tmp_path):
    model = fresh_model()
    batches = make_batches(STEPS, SETUP.micro)
    reference, reference_loss, reference_state = plain_loop(model, SETUP, batches)
    module = TwoView(model)
    callback = DynamicsCallback(tmp_path / "run", {"cc": "model.cc", "mlo": "model.mlo"})
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         accumulate_grad_batches=SETUP.micro, gradient_clip_val=CLIP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, _loader(batches))
    assert_bit_identical(state(module.model), reference_state)
    per_param, per_step = dynamics.load(tmp_path / "run")
    _check(without_prefix(per_param, "model."), per_step, reference, reference_loss, SETUP)
