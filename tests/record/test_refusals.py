"""Set-ups the recorder cannot measure correctly are refused at attach, naming what is wrong."""
import pytest
import torch
from torch import nn

import dynamics
from tests.harness import TwoView


def test_sparse_gradients_are_refused_loudly(tmp_path):
    model = TwoView()
    model.table = nn.Embedding(10, 3, sparse=True)
    with pytest.raises(NotImplementedError, match="'table' \\(Embedding\\) has sparse=True"):
        dynamics.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), views={"cc": model.cc},
                        out=tmp_path / "r")


def test_lbfgs_is_refused(tmp_path):
    model = TwoView()
    with pytest.raises(NotImplementedError, match="LBFGS"):
        dynamics.attach(model, torch.optim.LBFGS(model.parameters()), views={"cc": model.cc}, out=tmp_path / "r")
