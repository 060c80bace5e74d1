"""Pictures and reports: plate heatmaps, segmentation overlays, dose-response plots, HTML pages.

Every picture is returned as PNG bytes, drawn with matplotlib's Agg renderer on detached
figures (no display, no pyplot state, nothing left open), in matplotlib's default style
whatever the user's matplotlibrc says. :class:`HtmlReport` puts them, with text and
tables, into one self-contained HTML file.
"""

from hts.compute.analysis.doseresponse import fit_4pl, logistic4
from hts.reports.dose import dose_response_plot
from hts.reports.heatmap import plate_heatmap
from hts.reports.html import HtmlReport
from hts.reports.overlay import contact_sheet, segmentation_overlay

__all__ = [
    "HtmlReport",
    "contact_sheet",
    "dose_response_plot",
    "fit_4pl",
    "logistic4",
    "plate_heatmap",
    "segmentation_overlay",
]
