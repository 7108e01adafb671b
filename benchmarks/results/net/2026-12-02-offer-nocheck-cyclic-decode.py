"""PS decode CPU per cyclic round: thread CPU of ``code.decode``, n = 45, s = 5, d = 1,033,510.

Run with each checkout's interpreter (``OPENBLAS_NUM_THREADS=1``); prints one JSON object.
``--screened`` (for the code before the change) leaves the NaN row out, as the former
``RoundCollector.offer`` erased it on arrival; without it the NaN row reaches the decoder.
Cases: clean; 5 liars sending -100 everywhere; one row with a NaN in its last coordinates
(outside the fast path's sample). Median of 5 decodes after one warm-up.
"""

import argparse
import json
import statistics
import time

import numpy as np

import draco
from draco.core.codes import make_code

N, S, D = 45, 5, 1033510
LIARS = (3, 11, 20, 31, 40)
NAN_ROW = 7


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--screened", action="store_true")
    args = parser.parse_args()
    code = make_code("cyclic", N, S)
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((N, D)).astype(np.float32)
    honest = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(N)}
    del grads
    liars = dict(honest)
    for j in LIARS:
        liars[j] = np.full(D, -100, honest[j].dtype)
    nan = dict(honest)
    if args.screened:
        del nan[NAN_ROW]
    else:
        nan[NAN_ROW] = honest[NAN_ROW].copy()
        nan[NAN_ROW][D - 5] = np.nan
    out: dict = {"draco": draco.__file__, "screened": args.screened}
    for name, received in (
        ("clean", honest),
        ("5 constant liars", liars),
        ("1 NaN row (outside the sample)", nan),
    ):
        cpu = []
        for i in range(6):
            c0 = time.thread_time()
            res = code.decode(received, rng=np.random.default_rng(i))
            if i:
                cpu.append(time.thread_time() - c0)
        out[name] = {
            "decode_cpu_ms_median": round(1e3 * statistics.median(cpu), 1),
            "min": round(1e3 * min(cpu), 1),
            "max": round(1e3 * max(cpu), 1),
            "liars": sorted(res.adversaries),
            "erasures": sorted(res.erasures),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
