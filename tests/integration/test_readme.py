"""The README's quickstart runs as written (on a small two-view model), so the first thing a user copies works."""
import re
from pathlib import Path

import torch
from torch import nn

README = Path(__file__).resolve().parents[2] / "README.md"


class TwoColumns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cc_column, self.mlo_column = nn.Linear(4, 3), nn.Linear(4, 3)
        self.head = nn.Linear(6, 1)

    def forward(self, x_cc, x_mlo):
        return self.head(torch.cat([self.cc_column(x_cc), self.mlo_column(x_mlo)], 1)).squeeze(1)


def test_quickstart_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    quickstart = text[text.index("## Quickstart"):]
    code = re.search(r"```python\n(.*?)```", quickstart, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = TwoColumns()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g))
              for _ in range(3)]
    namespace = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "loader": loader,
                 "criterion": nn.MSELoss()}
    exec(compile(code, str(README), "exec"), namespace)
    per_param, per_step = namespace["per_param"], namespace["per_step"]
    assert per_step["step"].tolist() == [0, 1, 2] and per_step["loss"].notna().all()
    assert set(per_param["view"].astype(str)) == {"cc", "mlo", "shared"}
    assert (per_param["condition"] == "baseline").all()
