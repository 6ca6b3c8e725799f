"""waypoint-parity: stage-by-stage numerical parity between Waypoint pipelines.

Map of the package (read in this order):
- `cli`          the `waypoint-parity` command; each subcommand is a few calls into the modules below
- `case`         case files (`cases/*.toml`) parsed into validated dataclasses
- `runner`       the contract every runner implements (reference, FastVideo)
- `capture`      the on-disk capture format: one run folder, manifest plus safetensors per frame
- `alignment`    harness-drawn noise and injected prompt embeddings shared by both sides
- `metrics`      error metrics between two tensors
- `tolerances`   dtype-aware tolerance rules and per-case overrides
- `compare`      aligns two captures stage by stage, diffs their configs, names the first divergence
- `output`       console table, summary.json and CSV of a comparison
- `suite`        runs every case against every pair of sides (`make parity`)
- `shard`        `--shard I/N` case selection, `--workers N` process pool, one device per worker
- `merge`        one index from parallel workers' parts or from several run folders (`merge`)
- `budget`       capture size estimate and limits, checked before a run writes anything
- `resume`       continuing a killed capture bitwise (`run --resume`)
- `verify`       full validation of a stored capture (`verify`)
- `tiny`         the built-in random-weight test checkpoint
"""

__version__ = "0.1.0"
