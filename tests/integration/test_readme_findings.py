"""The README's Findings block is what the committed findings.json files say: a changed number in either fails."""
import json
import re
import shutil
from pathlib import Path

import pytest

from analyses import readme_findings as R

ROOT = Path(__file__).resolve().parents[2]


def test_readme_findings_match_the_committed_findings_json():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = R.render(R.load_findings(ROOT / "figures"))
    assert R.current(readme) == block, "README Findings are stale: run python -m analyses.readme_findings"


def test_every_number_in_the_block_comes_from_a_findings_file(tmp_path):
    """Independent of the renderer: each number the block prints (3 decimals) is some value of the JSON files
    rounded to 3 decimals; and a changed value in a findings.json makes the check fail."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    values = set()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            values.add(f"{x:.3f}")

    for f in R.load_findings(ROOT / "figures").values():
        walk(f)
    printed = re.findall(r"−?\d+\.\d{3}\b", R.current(readme))
    assert printed, "the block prints no numbers"
    missing = [p for p in printed if p.replace("−", "-") not in values]
    assert not missing, f"numbers in the README's Findings that no findings.json holds: {missing[:5]}"
    # tamper with one committed value in a copy: the check notices
    figs = tmp_path / "figures"
    shutil.copytree(ROOT / "figures", figs, ignore=shutil.ignore_patterns("*.png", "*.html", "figures"))
    path = figs / "findings.json"
    f = json.loads(path.read_text())
    v = f["single_view"][f["views"][0]]
    v["mean"] = v["mean"] + 0.01
    v["values"] = [x + 0.01 for x in v.get("values", [])]  # below three runs the block prints these
    path.write_text(json.dumps(f))
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    assert R.main(["--figures", str(figs), "--readme", str(tmp_path / "README.md"), "--check"]) == 1


def test_rewrite_replaces_only_the_block():
    text = f"intro\n{R.BEGIN}\nold 0.123\n{R.END}\noutro\n"
    assert R.rewrite(text, "new\n") == f"intro\n{R.BEGIN}\nnew\n{R.END}\noutro\n"
    with pytest.raises(ValueError, match="no generated Findings block"):
        R.rewrite("no markers", "x")
