"""Experiments over many runs: ``draco-experiment``'s grid, runner and report, and curves.

- ``grid``: the TOML experiment file read into its runs (``load_experiment``, ``RunSpec``);
- ``runner``: each run through the real ``draco-run``, resumable (``run_all``);
- ``report``: a row per run, comparisons with the clean run, table.md / table.json;
- ``figures``: Figure-1-style PNGs per (attack, s) (matplotlib, optional);
- ``curves``: a run directory's accuracy curve and ``draco-plot``'s figure.
"""
