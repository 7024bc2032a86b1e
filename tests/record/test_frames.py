"""Flush-time verdicts on hand-written arrays, and the clip_grad_value_ note end to end."""
import math

import numpy as np
import torch

import dynamics
from dynamics.record.frames import clip_factor
from tests.harness import fresh_model, make_batches


def test_clip_factor_verdicts():
    true = np.array([4.0, 9.0, 16.0])
    everywhere = np.ones(3, bool)
    assert clip_factor(true, true, everywhere)[1] == "none"
    factor, verdict = clip_factor(true, true * 2.0 ** -20, everywhere)     # every tensor divided by 1024
    assert verdict == "power-of-two" and factor == 2.0 ** -10
    assert clip_factor(true, true * 0.25, everywhere)[1] == "uniform"     # 0.5 is a plausible clip factor
    factor, verdict = clip_factor(true, true * 0.09, everywhere)           # 0.3: a clip_grad_norm_ factor
    assert verdict == "uniform" and math.isclose(factor, 0.3)
    assert clip_factor(true, np.array([1.0, 9.0, 16.0]), everywhere)[1] == "non-uniform"
    assert clip_factor(true, true * 0.09, np.zeros(3, bool))[1] == "none"  # nothing usable


def test_clip_grad_value_is_noted_with_its_steps(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r"):
        for [(x_cc, x_mlo, y)] in make_batches(3):
            ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
            optimizer.step()
            optimizer.zero_grad()
    notes = dynamics.read_meta(tmp_path / "r")["notes"]
    (text, steps), = notes.items()
    assert "non-uniformly" in text and steps == [0, 1, 2]
    _, per_step = dynamics.load(tmp_path / "r")
    assert per_step["clip_factor"].isna().all()


def test_unattributed_rows_by_hand():
    from dynamics.schema import BUFFER_ROWS as QUANTITIES, GRAD_SQ
    from dynamics.record.frames import unattributed_rows
    values = np.full((2, len(QUANTITIES), 3), np.nan)
    values[:, GRAD_SQ] = [[5.0, 1e-16, 2.0], [5.0, 1e-16, 2.0]]   # tensor 0 is not attributed
    parts = np.zeros((2, 2, 3, 2))                                  # [row, view, (grad_sq, lca, cross), shared]
    parts[:, 0, 0] = [[0.5, 1.0], [0.5, 1.0]]                       # ‖g_cc‖²
    parts[:, 1, 0] = [[0.5, 1.0], [0.5, 0.5]]                       # ‖g_mlo‖²
    parts[:, :, 2] = 0.0                                            # orthogonal parts: Σ = ‖g‖²
    parts[:, :, 0, 0] = 0.4e-16                                     # tensor 1: 0.8e-16 vs 1e-16, rounding-level
    # row 0 adds up (tensor 2: 1 + 1 = 2; tensor 1 differs only at noise level); row 1 misses 0.5 of tensor 2
    assert unattributed_rows(values, parts, [1, 2]).tolist() == [1]
