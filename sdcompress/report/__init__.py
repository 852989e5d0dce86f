"""Run reports: ``report.json`` (:class:`RunReport`), ``report.md`` and plots."""

from sdcompress.report.plots import plot_exponents, plot_losses, plot_modules, plot_training
from sdcompress.report.render import FILES, MARKDOWN_FILE, PLOTS, render_markdown, render_plots, render_run
from sdcompress.report.run import REPORT_FILE, RunReport, environment, git_hash

__all__ = [
    "FILES",
    "MARKDOWN_FILE",
    "PLOTS",
    "REPORT_FILE",
    "RunReport",
    "environment",
    "git_hash",
    "plot_exponents",
    "plot_losses",
    "plot_modules",
    "plot_training",
    "render_markdown",
    "render_plots",
    "render_run",
]
