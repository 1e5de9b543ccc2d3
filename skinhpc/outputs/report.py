"""The reports' public entry points, one import for their callers (the reduce's publish step and
``skinhpc evaluate``).

- :mod:`.report_job`: ``ensemble/report.html`` of a reduced job;
- :mod:`.report_eval`: the report of ``skinhpc evaluate`` on another dataset;
- :mod:`.plots`: the reduce's PNG plots and the drawing pieces both reports share;
- :mod:`.report_html`: formatting, tables, CSS and the disclaimer both reports share.

Reports present what the reduce or the evaluation computed; metrics come from
:mod:`skinhpc.metrics`, never from here.
"""

from skinhpc.outputs.plots import make_plots
from skinhpc.outputs.report_eval import render_evaluation, write_evaluation_report
from skinhpc.outputs.report_html import DISCLAIMER
from skinhpc.outputs.report_job import render, write_report

__all__ = ["DISCLAIMER", "make_plots", "render", "render_evaluation", "write_evaluation_report",
           "write_report"]
