"""The README's trainer examples run as written (on small models), so what a user copies works."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.harness import fresh_model, make_batches

README = Path(__file__).resolve().parents[2] / "README.md"


def _example(after: str) -> str:
    text = README.read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)


def _run(code: str, namespace: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_lightning_example(tmp_path, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    from tests.integrations.test_lightning import AUTOMATIC, LitTwoView, _loader
    monkeypatch.chdir(tmp_path)
    namespace = _run(_example("**PyTorch Lightning**"), {"module": LitTwoView(fresh_model(), AUTOMATIC[0]),
                                                         "train_loader": _loader(make_batches(4, 2))})
    per_param, per_step = namespace["per_param"], namespace["per_step"]
    assert per_step["step"].tolist() == [0, 1, 2, 3] and per_step["loss"].notna().all()
    assert set(per_param["view"].astype(str)) == {"cc", "mlo", "shared"}


class TwoTowers(nn.Module):
    """A model with a vision and a text tower, as CLIPModel has; returns the loss the Trainer expects."""

    def __init__(self) -> None:
        super().__init__()
        self.vision_model, self.text_model = nn.Linear(6, 4), nn.Embedding(10, 4)

    def forward(self, pixel_values, input_ids, labels):
        score = (self.vision_model(pixel_values) * self.text_model(input_ids).mean(1)).sum(1)
        return {"loss": ((score - labels) ** 2).mean()}


def test_huggingface_example(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(6, generator=g), "input_ids": torch.randint(10, (3,), generator=g),
             "labels": torch.randn((), generator=g)} for _ in range(32)]
    torch.manual_seed(0)
    # 32 examples in batches of 8, 2 accumulated, 3 epochs (the defaults): 6 steps
    namespace = _run(_example("**Hugging Face `Trainer`**"), {"model": TwoTowers(), "train_dataset": data})
    per_param, per_step = namespace["per_param"], namespace["per_step"]
    assert len(per_step) == 6 and per_step["loss"].notna().all() and per_step["grad_norm"].notna().all()
    assert set(per_param["view"].astype(str)) == {"image", "text"}
