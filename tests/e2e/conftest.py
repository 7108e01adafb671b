"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest
from e2e_helpers import RunResult, run_batch, runs_wanted


@pytest.fixture(scope="module")
def batch(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, RunResult]:
    """The module's ``JOBS`` (``{name: draco-run args}``) that its selected tests name with
    ``@pytest.mark.draco_runs``, run side by side (``run_batch``) before the first of them:
    {name: RunResult}. Each test then checks the runs it named, so a broken run fails the
    tests of its own attack and vote, by their own names."""
    jobs = request.module.JOBS
    folder = tmp_path_factory.mktemp("batch")
    # A name missing from JOBS (a run the module left out, e.g. for want of a data set)
    # fails, or skips, only the test that asked for it.
    names = [n for n in runs_wanted(request.session.items, request.module) if n in jobs]
    return run_batch({name: (folder / name / "run", jobs[name]) for name in names})
