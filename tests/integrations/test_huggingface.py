"""DynamicsCallback under the transformers Trainer's own loop, against a plain loop's brute force (float64).

A tiny GPT-2 built from a config (nothing downloaded, no network) learns next tokens with gradient accumulation
and ``max_grad_norm``. Some labels are masked, unevenly between micro-batches, so the Trainer's loss (summed
over the accumulated tokens, divided by their number) differs from a mean of the micro-batch means: the
reference loop computes that loss itself from the logits. Step 0 and the clipped steps are checked by name,
so the test fails on a stale or clipped gradient.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import dynamics
from tests.harness import assert_matches_reference, clone
from tests.integrations.reference import brute_force_rows, expected_clip_factor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from dynamics.integrations.huggingface import DynamicsCallback  # noqa: E402 - after the skip

STEPS, ACCUMULATE, BATCH, TOKENS, VOCAB, LR, MAX_NORM = 4, 2, 4, 8, 32, 0.5, 0.45
VIEWS = {"embeddings": ["transformer.wte", "transformer.wpe"], "blocks": "transformer.h"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=TOKENS, n_embd=8, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                     eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _examples() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS * ACCUMULATE * BATCH):
        ids = torch.randint(VOCAB, (TOKENS,), generator=g)
        labels = ids.clone()
        labels[torch.rand(TOKENS, generator=g) < 0.3] = -100  # masked tokens, a different number per example
        labels[0] = -100  # never predicted: whether the Trainer counts it or not, the loss is the same
        out.append({"input_ids": ids, "labels": labels})
    return out


def _micro_batches(examples: list[dict]) -> list[list[dict]]:
    """The Trainer's batches in order (sequential sampler), grouped by optimizer step."""
    batches = [{k: torch.stack([e[k] for e in examples[i:i + BATCH]]) for k in examples[0]}
               for i in range(0, len(examples), BATCH)]
    return [batches[i:i + ACCUMULATE] for i in range(0, len(batches), ACCUMULATE)]


def _plain_loop(model: torch.nn.Module, steps: list[list[dict]]):
    """What the Trainer computes, written out: per step the summed next-token cross-entropy of its micro-batches
    over the number of labelled tokens, backward per micro-batch, clip to MAX_NORM, SGD step. Returns the
    brute-force rows, the per-step loss and the trained parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    rows, losses = [], []
    for step, micro in enumerate(steps):
        counted = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        total = 0.0
        for b in micro:
            logits = model(input_ids=b["input_ids"]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), b["labels"][:, 1:].reshape(-1),
                                                     ignore_index=-100, reduction="sum") / counted
            loss.backward()
            total += float(loss.detach())
        before = {n: (p.grad.double().clone(), p.detach().double().clone()) for n, p in model.named_parameters()}
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        optimizer.step()
        optimizer.zero_grad()
        rows += brute_force_rows(step, before, dict(model.named_parameters()))
        losses.append(total)
    return pd.DataFrame(rows), pd.Series(losses, index=pd.RangeIndex(len(steps), name="step")), model


def _train(tmp_path, model: torch.nn.Module, callback) -> None:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE, num_train_epochs=1, learning_rate=LR, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=MAX_NORM, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0,
        train_sampling_strategy="sequential", disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.Trainer(model=model, args=args, train_dataset=_examples(), callbacks=[callback]).train()


def test_trainer_with_accumulation_and_max_grad_norm_matches_the_plain_loop(tmp_path):
    model = _model()
    reference, reference_loss, reference_model = _plain_loop(clone(model), _micro_batches(_examples()))
    callback = DynamicsCallback(tmp_path / "run", VIEWS, flush_every=3)
    _train(tmp_path, model, callback)
    # one computation: the Trainer's loop and the plain one (the loss is summed in another order: last bits)
    torch.testing.assert_close(dict(model.named_parameters()), dict(reference_model.named_parameters()),
                               rtol=1e-5, atol=1e-7)
    per_param, per_step = dynamics.load(tmp_path / "run")
    # tied weights: lm_head.weight is transformer.wte.weight, recorded once under its first name
    reference = reference[reference["param"] != "lm_head.weight"]
    step0 = reference[reference["step"] == 0].set_index("param")["grad_sq"]
    got0 = per_param[per_param["step"] == 0].astype({"param": str}).set_index("param")["grad_sq"]
    assert (step0 > 0).all()
    np.testing.assert_allclose(got0.loc[step0.index], step0, rtol=1e-4, err_msg="grad_sq at step 0")
    assert_matches_reference(per_param, reference, rtol=1e-4, atol_of_max=1e-7)
    steps = per_step.set_index("step")
    expected = expected_clip_factor(reference, MAX_NORM)
    clipped = expected[expected < 1].index
    assert len(clipped) >= 2, "max_grad_norm must act for the test to mean something"
    np.testing.assert_allclose(steps.loc[clipped, "clip_factor"], expected[clipped], rtol=1e-5)
    np.testing.assert_allclose(steps["loss"], reference_loss, rtol=1e-5)
    np.testing.assert_allclose(steps["grad_norm"], np.sqrt(reference.groupby("step")["grad_sq"].sum()), rtol=1e-5)
    assert steps["lr_0"].eq(LR).all()
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed" and not meta.get("errors") and not meta["notes"]
    views = per_param.drop_duplicates("param").set_index("param")["view"].astype(str)
    assert views["transformer.wte.weight"] == "embeddings" and views["transformer.h.1.mlp.c_fc.weight"] == "blocks"
    assert views["transformer.ln_f.weight"] == "shared"


def test_a_failed_train_is_closed_when_training_begins_again(tmp_path):
    model = _model()
    callback = DynamicsCallback(tmp_path / "run", VIEWS)

    class Boom(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("boom")

    boom = Boom()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=BATCH,
                                          max_steps=3, report_to="none", save_strategy="no", use_cpu=True,
                                          disable_tqdm=True, logging_steps=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_examples(), callbacks=[callback, boom])
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    trainer.remove_callback(boom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed" and meta["resumed_at"] == [2]
    assert dynamics.load(tmp_path / "run")[1]["step"].tolist() == [0, 1, 2, 3, 4]


def test_wrong_views_fail_at_train_begin_and_leave_no_run(tmp_path):
    callback = DynamicsCallback(tmp_path / "run", {"blocks": "transformer.nothing"})
    with pytest.raises(ValueError, match="view 'blocks': pattern 'transformer.nothing' matches no trainable"):
        _train(tmp_path, _model(), callback)
    assert not (tmp_path / "run").exists()
