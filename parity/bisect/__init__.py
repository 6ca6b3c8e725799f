"""Which FastVideo commit changed parity: `waypoint-parity bisect` and `bisect --walk`.

- `git`          the user's repository, read only; a detached worktree per tested commit
- `programs`     the tested program (FastVideo's runner by default; pluggable)
- `import_fixes` fixes old commits need to import, applied at run time in the tested process
- `child`        one commit tested in a process of its own -> a `CommitRow`
- `session`      the upstream capture made once; `walk` and `bisect` (git bisect run + `step`)
- `outcome`      rows, the stage criterion, which columns changed between commits
- `report`       JSON, Markdown table, HTML page, console table
"""
