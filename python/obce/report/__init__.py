"""Reports of a run: figures of neuron importance (:mod:`obce.report.figures`) and the page that
gathers a run folder's results into one self-contained HTML file and a Markdown summary
(:mod:`obce.report.page`, :func:`write_report`; ``obce report`` on the command line)."""

from .page import summary_lines, write_report

__all__ = ["summary_lines", "write_report"]
