"""What a user of the ecosystem expects of a package: a licence file matching the metadata, type information,
one version everywhere, extras for the integrations (which the test extra installs), a changelog, a CLI that
says its version and shows examples."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

import dynamics
from dynamics.cli import main

REPO = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config


def _requirements(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip() and not line.strip().startswith("#")]


def test_licence_file_matches_the_metadata():
    config = _setup_cfg()
    assert config["metadata"]["license"] == "MIT"
    assert config["metadata"]["license_files"] == "LICENSE"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_type_information_is_shipped():
    assert (REPO / "dynamics" / "py.typed").exists()
    assert "py.typed" in _setup_cfg()["options.package_data"]["dynamics"]


def test_one_version():
    assert _setup_cfg()["metadata"]["version"] == "attr: dynamics.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", dynamics.__version__)
    assert f"## {dynamics.__version__}" in (REPO / "CHANGELOG.md").read_text()


def test_extras_for_the_integrations_and_the_test_extra_installs_them():
    extras = _setup_cfg()["options.extras_require"]
    names = {key: [re.split(r"[<>=!~;\[ ]", r)[0] for r in _requirements(extras[key])] for key in extras}
    assert names["lightning"] == ["lightning"]
    assert names["huggingface"] == ["transformers", "accelerate"]
    assert names["tensorboard"] == ["tensorboard"]
    for extra in ("lightning", "huggingface", "tensorboard"):
        assert set(names[extra]) <= set(names["test"]), extra
    # pinned in the test extra, so `make test` runs the versions the README names
    assert all("==" in r for r in _requirements(extras["test"]) if r.split("=")[0] in
               {"lightning", "transformers", "accelerate", "tensorboard"})


def test_cli_version_and_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"dynamics {dynamics.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "dynamics export runs/* --tensorboard" in text and "dynamics report" in text
