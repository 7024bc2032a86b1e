"""Importing and using the report leaves the user's matplotlib backend alone (a notebook keeps inline plots)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_report_and_plots_keep_the_users_backend(tmp_path):
    script = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")  # a backend that is not Agg, chosen by the user before importing dynamics
        import dynamics
        dynamics.plots  # the figures and (through the package) the report
        assert matplotlib.get_backend() == "svg", "import: " + matplotlib.get_backend()
        from tests.report.layout import record_sweep
        runs = record_sweep(__import__("pathlib").Path({str(tmp_path)!r}), 2, 2, seeds=1)
        dynamics.report.report(runs, {str(tmp_path / "rep")!r}, progress=False)
        assert matplotlib.get_backend() == "svg", "report: " + matplotlib.get_backend()
        import matplotlib.pyplot as plt
        assert plt.get_fignums() == [], f"the report left pyplot figures open: {{plt.get_fignums()}}"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
