"""A torch.compile'd model: the recorder's hooks sit on the parameters and the optimizer, outside the
compiled graph, so the numbers must match a brute-force computation made in the same loop."""
import numpy as np
import pandas as pd
import torch

import dynamics
from harness import fresh_model, make_batches


def test_compiled_model_matches_brute_force(tmp_path):
    model = fresh_model()
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    names = [n for n, _ in model.named_parameters()]
    expected = []
    with dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r"):
        for step, [(x_cc, x_mlo, y)] in enumerate(make_batches(3)):
            ((compiled(x_cc, x_mlo) - y) ** 2).mean().backward()
            g = [p.grad.double().clone() for p in model.parameters()]
            before = [p.detach().double().clone() for p in model.parameters()]
            optimizer.step()
            optimizer.zero_grad()
            for name, gi, p, b in zip(names, g, model.parameters(), before):
                expected.append({"step": step, "param": name, "grad_sq_ref": float((gi ** 2).sum()),
                                 "lca_ref": float((gi * (p.detach().double() - b)).sum())})
    per_param, _ = dynamics.load(tmp_path / "r")
    merged = pd.DataFrame(expected).merge(per_param.astype({"param": str}), on=["step", "param"])
    assert len(merged) == len(expected) == len(per_param)
    np.testing.assert_allclose(merged["grad_sq"], merged["grad_sq_ref"], rtol=2e-5)
    np.testing.assert_allclose(merged["lca"], merged["lca_ref"], rtol=2e-5, atol=1e-12)
