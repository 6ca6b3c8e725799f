"""HTML reports of comparisons: static pages that open from the file system, no server, no network.

    write_report(result, "reports/x")        # -> reports/x/index.html (overview), stage pages, blur page, video
    write_run_index(out_root, entries)       # -> out_root/index.html linking every comparison's report

Modules: `build` (data and pages), `images` (sharpness, heatmaps, PNGs, video), `svg` (line charts);
jinja2 templates, with the stylesheet they inline, live in `templates/`.
"""

from parity.report.build import REPORT_MARKER, blur_finding, write_report, write_run_index

__all__ = ["REPORT_MARKER", "blur_finding", "write_report", "write_run_index"]
