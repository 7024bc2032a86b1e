"""The integrations load only when imported by name, and say which extra to install when their package is missing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPTIONAL = ("lightning", "pytorch_lightning", "transformers", "accelerate", "tensorboard")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_import_dynamics_loads_no_trainer_and_no_tensorboard():
    done = _python("import sys, dynamics, dynamics.cli, dynamics.integrations; "
                   f"print(','.join(m for m in {OPTIONAL!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("module, blocked, extra", [
    ("dynamics.integrations.lightning", ["lightning"], "lightning"),
    ("dynamics.integrations.pytorch_lightning", ["pytorch_lightning"], "lightning"),
    ("dynamics.integrations.huggingface", ["transformers"], "huggingface"),
])
def test_a_missing_trainer_names_the_extra(module, blocked, extra):
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in blocked)  # import of a None entry raises
    done = _python(f"import sys; {block}; import {module}")
    assert done.returncode != 0
    assert f"pip install 'dynamics[{extra}]'" in done.stderr, done.stderr


def test_a_missing_tensorboard_names_the_extra(tmp_path):
    done = _python("import sys; sys.modules['tensorboard'] = None; "
                   "from dynamics.integrations.tensorboard import export_tensorboard; "
                   f"export_tensorboard({str(tmp_path)!r}, {str(tmp_path / 'tb')!r})")
    assert done.returncode != 0
    assert "pip install 'dynamics[tensorboard]'" in done.stderr, done.stderr
