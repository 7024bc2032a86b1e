"""dynamics.utilization on a tiny model whose outputs are known in closed form."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from dynamics.analysis.utilization import load_utilization, save_utilization, utilization


class OnlyA(torch.nn.Module):
    """logit = 2 * a; view b is ignored."""

    def forward(self, x):
        a = x["a"] if isinstance(x, dict) else x[:, 0:1]
        return 2 * a[:, 0]


class Pair(torch.nn.Module):
    def forward(self, a, b):
        return 2 * a[:, 0] + 0 * b[:, 0]


A = torch.tensor([[1.0], [-1.0], [2.0], [-2.0]])
B = torch.tensor([[5.0], [-3.0], [0.5], [7.0]])
Y = torch.tensor([1, 0, 1, 0])


def dict_loader():
    return [({"a": A[:2], "b": B[:2]}, Y[:2]), ({"a": A[2:], "b": B[2:]}, Y[2:])]


def test_zero_ablation_hand_values():
    model = OnlyA().train()
    u = utilization(model, dict_loader(), views=["a", "b"], n_boot=200).set_index(["view", "metric"])
    # without a every logit is 0 -> predicted 1 (logit >= 0): accuracy 1/2, AUC 1/2 (all tied)
    assert u.loc[("a", "accuracy"), "with_view"] == 1.0
    assert u.loc[("a", "accuracy"), "without_view"] == 0.5
    assert u.loc[("a", "accuracy"), "utilization"] == pytest.approx(0.5)
    assert u.loc[("a", "auc"), "without_view"] == 0.5 and u.loc[("a", "auc"), "utilization"] == pytest.approx(0.5)
    assert u.loc[("b", "auc"), "utilization"] == 0.0
    assert (u.loc[("b", "auc"), "utilization_lo"], u.loc[("b", "auc"), "utilization_hi"]) == (0.0, 0.0)
    assert u.loc[("a", "accuracy"), "n_examples"] == 4
    assert model.training  # mode restored


def test_mean_ablation_uses_training_mean():
    train = [({"a": torch.tensor([[1.0], [3.0]]), "b": torch.zeros(2, 1)}, torch.tensor([0, 1]))]
    u = utilization(OnlyA(), dict_loader(), views=["a", "b"], ablate="mean", train_loader=train,
                    metrics=["accuracy"], n_boot=0).set_index("view")
    # a replaced by its mean 2 -> logit 4 everywhere -> all predicted 1 -> accuracy 1/2
    assert u.loc["a", "without_view"] == 0.5
    assert np.isnan(u.loc["a", "utilization_lo"])
    with pytest.raises(ValueError, match="train_loader"):
        utilization(OnlyA(), dict_loader(), views=["a", "b"], ablate="mean")


def test_tuple_inputs_and_single_tensor_columns():
    tup = [((A, B), Y)]
    u = utilization(Pair(), tup, views=["a", "b"], metrics=["auc"], n_boot=0).set_index("view")
    assert u.loc["a", "utilization"] == pytest.approx(0.5) and u.loc["b", "utilization"] == 0.0
    x = torch.cat([A, B], dim=1)
    u2 = utilization(OnlyA(), [(x, Y)], views={"a": [0], "b": [1]}, metrics=["auc"], n_boot=0).set_index("view")
    assert u2.loc["a", "without_view"] == 0.5 and u2.loc["b", "without_view"] == 1.0
    with pytest.raises(ValueError, match="'c'"):
        utilization(OnlyA(), dict_loader(), views=["a", "c"])


def test_multiclass_scores():
    class Three(torch.nn.Module):
        def forward(self, x):  # class scores driven by view a only
            a = x["a"][:, 0]
            return torch.stack([-a, 1 - a.abs(), a], dim=1)

    loader = [({"a": torch.tensor([[-2.0], [0.0], [2.0]]), "b": torch.ones(3, 1)}, torch.tensor([0, 1, 2]))]
    u = utilization(Three(), loader, views=["a", "b"], metrics=["accuracy"], n_boot=0).set_index("view")
    # without a every row scores (0, 1, 0) -> class 1 -> 1 of 3 right
    assert u.loc["a", "with_view"] == 1.0 and u.loc["a", "without_view"] == pytest.approx(1 / 3)
    assert u.loc["a", "utilization"] == pytest.approx(2 / 3)


def test_save_and_load_roundtrip(tmp_path):
    table = pd.DataFrame({"view": ["cc", "mlo"], "metric": ["auc", "auc"], "with_view": [0.9, 0.9],
                          "without_view": [0.6, 0.85], "utilization": [1 / 3, 0.05 / 0.9],
                          "utilization_lo": [0.2, np.nan], "utilization_hi": [0.4, np.nan]})
    path = save_utilization(table, tmp_path, split="test", ablate="zero")
    doc = json.loads(path.read_text())
    assert doc["format"] == 1 and doc["split"] == "test" and doc["rows"][1]["utilization_lo"] is None
    back = load_utilization(tmp_path)
    assert back["utilization"].tolist() == pytest.approx([1 / 3, 0.05 / 0.9])
    assert np.isnan(back.loc[1, "utilization_lo"])
    assert load_utilization(tmp_path / "nothing") is None


def test_load_csv_computes_rate(tmp_path):
    pd.DataFrame({"view": ["cc"], "metric": ["accuracy"], "with_view": [0.8], "without_view": [0.6]}).to_csv(
        tmp_path / "utilization.csv", index=False)
    assert load_utilization(tmp_path).loc[0, "utilization"] == pytest.approx(0.25)
