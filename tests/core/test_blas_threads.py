"""draco.core.blas_threads: one BLAS thread inside the block, the old count after it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from draco.core import blas_threads
from draco.core.blas_threads import single_blas_thread
from draco.core.codes import make_code


def test_one_thread_inside_restored_after_and_reentrant() -> None:
    before = blas_threads.blas_threads()
    if before is None:
        pytest.skip("numpy's BLAS here is not an OpenBLAS with thread controls")
    with single_blas_thread():
        assert blas_threads.blas_threads() == 1
        with single_blas_thread():
            assert blas_threads.blas_threads() == 1
        assert blas_threads.blas_threads() == 1  # the inner exit keeps the outer limit
    assert blas_threads.blas_threads() == before


def test_restored_when_the_block_raises() -> None:
    before = blas_threads.blas_threads()
    with pytest.raises(RuntimeError), single_blas_thread():
        raise RuntimeError("boom")
    assert blas_threads.blas_threads() == before


def test_concurrent_blocks_restore_the_count_once_all_leave() -> None:
    before = blas_threads.blas_threads()
    inside = threading.Barrier(4)

    def work() -> None:
        with single_blas_thread():
            inside.wait(timeout=10)
            np.ones((64, 64)) @ np.ones(64)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert blas_threads.blas_threads() == before


def test_without_openblas_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas_threads, "_CONTROLLER", None)
    assert blas_threads.blas_threads() is None
    with single_blas_thread():
        pass


def test_cyclic_decode_runs_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    if blas_threads.blas_threads() is None:
        pytest.skip("numpy's BLAS here is not an OpenBLAS with thread controls")
    import draco.core.cyclic_code as codes

    seen: list[int | None] = []
    real = codes.decode_cyclic

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(blas_threads.blas_threads())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(codes, "decode_cyclic", spy)
    code = make_code("cyclic", 7, 1)
    grads = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    received = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(7)}
    result = code.decode(received, rng=np.random.default_rng(1))
    assert seen == [1]
    assert np.allclose(result.gradient, grads.sum(axis=0), rtol=1e-5, atol=1e-5)
