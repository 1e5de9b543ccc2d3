"""The reports' public entry points, one import for their callers (the reduce's publish step and
``skinhpc evaluate``).

- :mod:`.job`: ``ensemble/report.html`` of a reduced job;
- :mod:`.evaluation`: the report of ``skinhpc evaluate`` on another dataset;
- :mod:`.figures`: every figure both reports show, one drawing each, and the reduce's PNG files;
- :mod:`.pieces`: formatting, tables, the inline image, CSS and the disclaimer both reports share.

Reports present what the reduce or the evaluation computed; metrics come from
:mod:`skinhpc.metrics`, never from here.
"""

from skinhpc.outputs.report.evaluation import render_evaluation, write_evaluation_report
from skinhpc.outputs.report.figures import make_plots
from skinhpc.outputs.report.job import WORST_ERRORS, render, write_report
from skinhpc.outputs.report.pieces import DISCLAIMER

__all__ = ["DISCLAIMER", "WORST_ERRORS", "make_plots", "render", "render_evaluation", "write_evaluation_report",
           "write_report"]
