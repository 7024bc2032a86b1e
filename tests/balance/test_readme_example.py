"""The README's intervention example runs as written, in an unchanged loop, and its decisions reach the run."""
import re
from pathlib import Path

import torch
from torch import nn

import dynamics
from tests.integration.test_readme import TwoColumns

README = Path(__file__).resolve().parents[2] / "README.md"


def test_interventions_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Interventions (`dynamics.balance`)"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = TwoColumns()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g),
               torch.randint(0, 2, (8,), generator=g).float()) for _ in range(3)]
    namespace = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "loader": loader,
                 "criterion": nn.BCEWithLogitsLoss(), "dynamics": dynamics}
    exec(compile(code, str(README), "exec"), namespace)
    _, per_step = dynamics.load(tmp_path / "runs" / "ogm-seed0")
    assert per_step[["ogm_coef_cc", "ogm_coef_mlo"]].notna().all().all() and len(per_step) == 3
    assert not any(len(p._backward_hooks or {}) for p in model.parameters())  # the with block removed them
