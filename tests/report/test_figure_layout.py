"""Every figure of the report, for 2, 3 and 6 conditions and 2 and 5 views, is fit to print: no text runs into
other text or off the canvas, no text under 7 pt, no blank or empty panel, legends off the panels and titles,
one or two journal columns wide (checked on the drawn artists' boxes, see tests/report/layout.py)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from dynamics import report  # noqa: E402
from dynamics.report import panels  # noqa: E402
from dynamics.report.style import publication_style  # noqa: E402

from .layout import assert_fit, record_sweep  # noqa: E402

CASES = [(2, 2), (3, 2), (6, 2), (2, 5), (3, 5), (6, 5)]
NAMES = ("dynamics", "matched_ratio", "share", "conditional_speed", "conditions", "interventions")


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """(conditions, views) -> the report's numbers, recorded once per module."""
    cache = {}

    def numbers(n_conditions, n_views):
        if (n_conditions, n_views) not in cache:
            runs = record_sweep(tmp_path_factory.mktemp(f"c{n_conditions}v{n_views}"), n_conditions, n_views)
            cache[n_conditions, n_views] = report.ReportNumbers(report.load_report_data(runs, progress=False))
        return cache[n_conditions, n_views]
    return numbers


@pytest.mark.parametrize("n_conditions,n_views", CASES, ids=[f"{c}cond-{v}views" for c, v in CASES])
def test_every_report_figure_is_fit_to_print(sweeps, n_conditions, n_views):
    nums = sweeps(n_conditions, n_views)
    with publication_style():
        figures = panels.report_figures(nums)
    try:
        assert [name for name, _, _ in figures] == list(NAMES)
        problems = []
        for name, _, fig in figures:
            try:
                assert_fit(f"{name} ({n_conditions} conditions, {n_views} views)", fig)
            except AssertionError as exc:
                problems.append(str(exc).splitlines()[0])
        assert not problems, "\n".join(problems)
    finally:
        for _, _, fig in figures:
            plt.close(fig)
