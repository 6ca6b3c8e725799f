"""Diagnosis: which difference matters, and where it starts.

- `teacher`    teacher forcing: the target model fed the reference's exact inputs, for local error
- `ablation`   one known difference at a time on the reference, ranked by its effect on the frames
- `drilldown`  the first divergent model call rerun with hooks on matched submodules
- `calibrate`  noise floors: the reference against itself under harmless perturbations
"""
