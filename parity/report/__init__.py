"""HTML reports of comparisons: static pages that open from the file system, no server, no network.

    write_report(result, "reports/x")        # -> reports/x/index.html (overview), stage pages, blur page, video
    write_run_index(out_root, entries)       # -> out_root/index.html linking every comparison's report
    write_attribution_page("x/attribution.json")   # -> x/attribution.html (`ablate`): ranked table, answer, blur bars
    write_diagnosis_page("y/diagnosis.json")       # -> y/diagnosis.html (`diagnose`): growth verdict, local vs cumulative, drill-down
    write_report(result, "reports/x", attribution=..., diagnosis=...)   # those pages inside the report, answers on its overview

Modules: `build` (data and pages), `diagnosis` (pages of the diagnosis commands), `images` (sharpness, heatmaps, PNGs, video), `svg` (line charts);
jinja2 templates, with the stylesheet they inline, live in `templates/`.
"""

from parity.report.build import REPORT_MARKER, blur_finding, write_report, write_run_index
from parity.report.diagnosis import attribution_answer, growth_sentence, write_attribution_page, write_diagnosis_page

__all__ = ["REPORT_MARKER", "attribution_answer", "blur_finding", "growth_sentence", "write_attribution_page", "write_diagnosis_page",
           "write_report", "write_run_index"]
