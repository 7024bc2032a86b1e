"""Names are data, never markup (report.md, figures), and the report says what the runs' metadata knows."""
import json
import re

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

import dynamics  # noqa: E402
from dynamics import cli, report  # noqa: E402
from dynamics.report.render import md_text  # noqa: E402
from tests.report.models import record_two_view  # noqa: E402

NASTY = "[x](javascript:alert(1))\n# head `tick` a|b $\\alpha_{$ *e* _u_"


def train(out, condition, seed, *, steps=6, manual_grad_steps=0, close=True):
    rec = record_two_view(out, condition, seed, steps=steps, flush_every=2, manual_grad_steps=manual_grad_steps)
    if close:
        rec.close()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("names")
    first = train(tmp / "nasty-0", NASTY, 0, manual_grad_steps=2)
    second = train(tmp / "plain-1", "plain", 1, close=False)  # never closed: status stays 'running'
    meta = json.loads((first / "meta.json").read_text())
    meta.setdefault("errors", []).append("disk full while flushing")
    (first / "meta.json").write_text(json.dumps(meta))
    return [first, second]


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return report.report(runs, out, progress=False, include_flagged=True, baseline="plain")


def test_md_text_escapes_every_markdown_significant_character():
    assert md_text("[x](y)") == "\\[x\\](y)" and md_text("![i] [r]") == "\\!\\[i\\] \\[r\\]"
    assert md_text("2.4 [1.1, 5.0]") == "2.4 [1.1, 5.0]"  # brackets that cannot link stay readable
    assert md_text("a\nb\r\nc") == "a b c"
    assert md_text("`#|!*") == "\\`\\#\\|\\!\\*"
    assert md_text("test_auc _u_") == "test_auc \\_u\\_"  # intra-word underscores cannot emphasise
    assert md_text("<b>&") == "&lt;b&gt;&amp;"


def test_report_md_never_turns_a_name_into_markup(written):
    md = written["md"].read_text()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    ours = ("# dynamics imbalance report", "## Findings", "## Warnings", "## Imbalance statistics", "## Shares",
            "## Comparisons with the reference (", "## Logged metrics", "## Figures", "## Runs")
    assert all(h.startswith(ours) for h in headings)  # the name shows (escaped) only inside our own heading
    assert not re.search(r"(?<!\\)\[x(?<!\\)\]\(", md)  # no live link
    assert "\\[x\\](javascript:alert(1)) \\# head \\`tick\\` a\\|b" in md
    for line in md.splitlines():
        if line.startswith("| nasty-0 |") and "TwoView" in line:  # the runs table: every pipe of the name escaped
            header = next(l for l in md.splitlines() if l.startswith("| run | condition |"))
            assert len(re.findall(r"(?<!\\)\|", line)) == len(re.findall(r"(?<!\\)\|", header))
    html = written["html"].read_text()
    assert "<a " not in html and "<h1>" in html and html.count("<h1>") == 1  # text, never markup


def test_figures_draw_names_with_dollars_literally(runs):
    from dynamics.report import panels
    nums = report.ReportNumbers(report.load_report_data(runs, progress=False), include_flagged=True)
    _, _, fig = panels.conditions_figure(nums)
    fig.canvas.draw()  # mathtext would fail to parse "$\alpha_{$"
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert any("\\$\\alpha_{\\$" in t for t in labels) or any(t.startswith("[x](javascript") for t in labels)
    from dynamics.report.style import plain
    assert plain("a$b\nc", 3) == "a\\$…" and plain("$x$") == "\\$x\\$"


def test_warnings_section_and_summary_count(runs, written, capsys):
    md = written["md"].read_text()
    section = md.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "plain-1 | not closed | the run was never closed (status 'running')" in section
    assert "nasty-0 | error | disk full while flushing" in section
    assert "nasty-0 | optimizer step only | 2 steps measured at the optimizer step only" in section
    assert "nasty-0 | flagged, kept | kept in the statistics (--include-flagged): 1 recorder error" in section
    assert "plain-1 | flagged, kept | kept in the statistics (--include-flagged): never closed" in section
    assert "The runs' metadata holds 5 warnings (see Warnings)." in md
    assert "Flagged runs are included in every statistic (--include-flagged): nasty-0, plain-1" in md
    assert cli.main(["summary", *map(str, runs), "--no-progress", "--include-flagged"]) == 0
    out = capsys.readouterr().out
    assert ("5 warnings in the runs' metadata (error: 1 (1 run); optimizer step only: 1 (1 run); not closed: 1 (1 run); "
            "flagged, kept: 2 (2 runs))" in out)
    assert cli.main(["summary", *map(str, runs), "--no-progress"]) == 2  # both flagged: nothing left to count
    assert "no run left to report: nasty-0: 1 recorder error; plain-1: never closed" in capsys.readouterr().err
