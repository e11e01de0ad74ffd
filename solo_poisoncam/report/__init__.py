"""Run reports: report.md, a self-contained report.html, and the console summary."""

from solo_poisoncam.report.render import write_report

__all__ = ["write_report"]
