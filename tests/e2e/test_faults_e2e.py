"""Fault injection with real processes: each run ends on the undisturbed run's model.

One parameter server and two worker processes on localhost, the numpy least-squares task
and the repetition code (n = 11, s = 2: groups [0..5] and [6..10]), two liars every round.
Faults:

- more than s workers of a group killed for seconds, then restarted: the round cannot
  decode, is retried with backoff while they are gone, and heals when they rejoin;
- a worker process frozen (SIGSTOP) past the round deadline, then resumed (SIGCONT): its
  queued RoundStarts are stale except the newest attempt, which it answers;
- the parameter server killed (SIGKILL) and resumed from its checkpoint (``--resume``) on
  the same port, while the workers reconnect by themselves;
- a worker that answers its whole backlog of missed rounds after a pause: late answers
  are ignored, never protocol violations;
- digest vote (``--vote digest``): a process holding 4 members of a group frozen or killed
  at its first payload request, i.e. after its digests counted and before its payload (the
  four faults above also end on the clean model under the digest vote; they are not run
  twice here because their digest path is the full vote's: erasures and retries).

Each test asserts ``model_sha256`` equal to the clean run's (retries rerun the same round
with the same parameters, samples and liars, so the trajectory is the clean one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    RUN_TIMEOUT,
    _env,
    draco_run,
    finish,
    make_keys,
    metrics,
    ready_port,
    reaped,
    rounds_done,
    start,
    summary,
    wait_for,
)

pytestmark = pytest.mark.e2e

N, S, ROUNDS = 11, 2, 300
RUN = [
    *["--workers", N, "--adversaries", S, "--attack", "constant", "--rounds", ROUNDS],
    *["--model", "lstsq", "--lstsq-dim", "16", "--batch-size", "8", "--eval-every", "0"],
    *["--checkpoint-every", "10"],
]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def clean_sha(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The undisturbed run's model (draco-run: same flags, its own processes)."""
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    status, _, err = draco_run(run_dir, *RUN, "--worker-procs", 2)
    assert status == 0, err
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (ROUNDS, 0), summ
    return str(summ["model_sha256"])


def _ps(tmp_path: Path, *extra: Any) -> tuple[subprocess.Popen[str], Path, Path, str]:
    """A draco-ps on a free port: (process, run dir, tokens file, "127.0.0.1:PORT")."""
    secret, tokens = make_keys(tmp_path, N)
    ready, run_dir = tmp_path / "ready.json", tmp_path / "run"
    ps = start(
        "ps",
        *["--port", 0, "--ready-file", ready, "--secret-file", secret, "--run-dir", run_dir],
        *RUN,
        *extra,
    )
    return ps, run_dir, tokens, f"127.0.0.1:{ready_port(ready, ps)}"


def _workers(address: str, tokens: Path, first: int, count: int) -> subprocess.Popen[str]:
    return start("worker", "--ps", address, "--token-file", tokens, "--id", first, "--count", count)


def _check_clean_end(run_dir: Path, clean_sha: str) -> list[dict[str, Any]]:
    summ = summary(run_dir)
    assert summ["rounds"] == ROUNDS
    assert summ["model_sha256"] == clean_sha
    records = metrics(run_dir)
    assert [r["round"] for r in records] == list(range(ROUNDS))  # one record per round
    assert not any(r["failed"] for r in records)
    return records


def test_more_than_s_workers_of_a_group_killed_and_restarted(
    tmp_path: Path, clean_sha: str
) -> None:
    ps, run_dir, tokens, address = _ps(tmp_path, "--round-timeout", 10)
    # 4 of group [0..5]: the 2 left cannot outvote 2 liars, nor decode without them.
    group = _workers(address, tokens, 0, 4)
    rest = _workers(address, tokens, 4, N - 4)
    with reaped(ps, group, rest):
        wait_for(lambda: rounds_done(run_dir) >= 5, 60, "five rounds", ps)
        os.kill(group.pid, signal.SIGKILL)
        group.wait(10)
        killed_at = rounds_done(run_dir)
        time.sleep(3.0)  # the round cannot decode meanwhile: retried with backoff
        stalled_at = rounds_done(run_dir)
        again = _workers(address, tokens, 0, 4)
        with reaped(again):
            status, _, err = finish(ps)
            assert finish(again)[0] == 0
            assert finish(rest)[0] == 0  # nobody was kicked
    assert status == 0, err
    # Stalled while they were gone: at most the round in flight (and one record still being
    # written when killed_at was read) completed after the kill.
    assert killed_at < ROUNDS and stalled_at <= killed_at + 2
    records = _check_clean_end(run_dir, clean_sha)
    healed = [r for r in records if r["attempts"] > 1]
    assert healed and "retry_error" in healed[0]
    # Backoff (0.25 s doubling to 4 s): a handful of attempts over ~3 s, not a hot loop.
    assert sum(r["attempts"] - 1 for r in records) < 20, [r["attempts"] for r in healed]
    assert "second payload" not in err and "violation" not in err


def test_worker_frozen_past_the_round_deadline_then_resumed(tmp_path: Path, clean_sha: str) -> None:
    ps, run_dir, tokens, address = _ps(tmp_path, "--round-timeout", 1, "--max-failed-rounds", 50)
    group = _workers(address, tokens, 0, 4)
    rest = _workers(address, tokens, 4, N - 4)
    with reaped(ps, group, rest):
        wait_for(lambda: rounds_done(run_dir) >= 5, 60, "five rounds", ps)
        os.kill(group.pid, signal.SIGSTOP)
        try:
            time.sleep(3.5)  # > 3 round deadlines: attempts time out with everyone connected
        finally:
            os.kill(group.pid, signal.SIGCONT)
        status, _, err = finish(ps)
        assert finish(group)[0] == 0 and finish(rest)[0] == 0
    assert status == 0, err
    records = _check_clean_end(run_dir, clean_sha)
    timed_out = [r for r in records if r["attempts"] > 1]
    assert timed_out, "the freeze never made a round miss its deadline: nothing was tested"


def test_ps_killed_and_resumed_while_workers_reconnect(tmp_path: Path, clean_sha: str) -> None:
    ps, run_dir, tokens, address = _ps(tmp_path)
    port = address.rsplit(":", 1)[1]
    a = _workers(address, tokens, 0, 6)
    b = _workers(address, tokens, 6, N - 6)
    with reaped(ps, a, b):
        ckpts = run_dir / "checkpoints"
        wait_for(lambda: ckpts.is_dir() and any(ckpts.glob("ckpt-*.npz")), 60, "a checkpoint", ps)
        os.kill(ps.pid, signal.SIGKILL)
        ps.wait(10)
        assert not (run_dir / "summary.json").exists(), "the run ended before the kill"
        time.sleep(1.0)  # the workers are retrying their connections meanwhile
        ready2 = tmp_path / "ready2.json"
        resumed = start(
            "ps",
            *["--resume", run_dir, "--port", port, "--ready-file", ready2],
            *["--secret-file", tmp_path / "secret"],
        )
        with reaped(resumed):
            status, out, err = finish(resumed)
            assert finish(a)[0] == 0 and finish(b)[0] == 0  # reconnected by themselves
    assert status == 0, err
    assert "resuming" in out
    _check_clean_end(run_dir, clean_sha)


def test_worker_answering_its_backlog_after_a_pause_is_not_kicked(
    tmp_path: Path, clean_sha: str
) -> None:
    ps, run_dir, tokens, address = _ps(tmp_path, "--log-level", "INFO")
    # Worker 0 of the group of 6: without it, 5 remain, enough for 2 liars.
    honest = _workers(address, tokens, 1, N - 1)
    lazy = subprocess.Popen(
        [sys.executable, str(HERE / "backlog_worker.py"), address, "0", str(tokens)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=_env(),
    )
    with reaped(ps, honest, lazy):
        wait_for(lambda: rounds_done(run_dir) >= 5, 60, "five rounds", ps)
        os.kill(lazy.pid, signal.SIGSTOP)  # its RoundStarts pile up in the socket
        try:
            paused_at = rounds_done(run_dir)
            wait_for(lambda: rounds_done(run_dir) >= paused_at + 40, 60, "40 more rounds", ps)
        finally:
            os.kill(lazy.pid, signal.SIGCONT)
        status, _, err = finish(ps)
        assert finish(honest)[0] == 0
        lazy_status, lazy_out, lazy_err = finish(lazy, timeout=RUN_TIMEOUT)
    assert status == 0, err
    # It answered the missed rounds one after another, the PS took them as late answers, and
    # it stayed until the PS's Bye (a kicked worker gets Error and exits non-zero).
    assert lazy_status == 0, lazy_err
    # How many RoundStarts it finds already queued behind the one it answers depends on how
    # the socket's bytes are read after SIGCONT (4 to 30 seen): at least one is a backlog.
    superseded = int(lazy_out.split("superseded")[1])
    assert superseded >= 1, lazy_out
    assert "protocol violation" not in err and "more than" not in err
    _check_clean_end(run_dir, clean_sha)


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


@pytest.mark.parametrize("fault", ["freeze", "kill"])
def test_digest_vote_majority_member_lost_between_its_digest_and_its_payload(
    tmp_path: Path, clean_sha: str, fault: str
) -> None:
    # Why (the only fault run under --vote digest): its digest counted, then its payload does
    # not come -- a moment the full vote has no equivalent of (the other faults pass under it
    # too, by hand; docs/protocol.md section 6).
    ps, run_dir, tokens, address = _ps(
        tmp_path,
        *["--vote", "digest", "--payload-timeout", 1, "--round-timeout", 2],
        *["--max-failed-rounds", 50, "--log-level", "INFO"],
    )
    # Ids 0..3 of group [0..5] stall together at their process's first payload request from
    # round 5 on: the 2 members left cannot back the group alone.
    stall = subprocess.Popen(
        [sys.executable, str(HERE / "stall_worker.py"), address, "0", "4", str(tokens), fault, "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=_env(),
    )
    rest = _workers(address, tokens, 4, N - 4)
    with reaped(ps, stall, rest):
        if fault == "freeze":
            wait_for(lambda: _stopped(stall.pid), 60, "the freeze", ps)
            try:
                time.sleep(3.0)  # its request times out; later attempts cannot decide
            finally:
                os.kill(stall.pid, signal.SIGCONT)
            status, _, err = finish(ps)
            stall_status, stall_out, stall_err = finish(stall)
            assert stall_status == 0, stall_err  # never kicked: its late payload was legal
            assert "stalled at round" in stall_out and "payloads" in stall_out, stall_out
        else:
            wait_for(lambda: stall.poll() is not None, 60, "the kill", ps)
            stall_out = stall.communicate()[0]
            assert stall.returncode == -signal.SIGKILL and "stalled at round" in stall_out
            again = _workers(address, tokens, 0, 4)
            with reaped(again):
                status, _, err = finish(ps)
                assert finish(again)[0] == 0
        assert finish(rest)[0] == 0
    assert status == 0, err
    assert "protocol violation" not in err
    if fault == "freeze":  # frozen for 3 s: the PS gave its request up and asked another
        assert "did not send its payload in time" in err
    records = _check_clean_end(run_dir, clean_sha)
    assert all(r["vote"] == "digest" for r in records)
    n_groups = 2
    # The fault was felt: a request more than one per group, or a retried round.
    assert any(r["payload_requests"] > n_groups or r["attempts"] > 1 for r in records)
