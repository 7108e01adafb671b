"""PS decode CPU per cyclic round (thread CPU of code.decode), n=45, s=5, d=1033510."""
import json, statistics, sys, time
import numpy as np
import draco
from draco.core.codes import make_code
n, s, d = 45, 5, 1033510
code = make_code("cyclic", n, s)
rng = np.random.default_rng(0)
grads = rng.standard_normal((n, d)).astype(np.float32)
honest = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(n)}
del grads
liars = [3, 11, 20, 31, 40]
nan_row = 7
def cases():
    yield "clean", dict(honest)
    r = dict(honest)
    for j in liars: r[j] = np.full(d, -100, honest[j].dtype)
    yield "5 constant liars", r
    r = dict(honest)
    if "wt-ingest2" in draco.__file__:
        x = honest[nan_row].copy(); x[d - 5] = np.nan; r[nan_row] = x   # reaches the decoder now
    else:
        del r[nan_row]   # the old offer erased it on arrival
    yield "1 NaN row (outside the sample)", r
out = {"draco": draco.__file__}
for name, received in cases():
    cpu = []
    for i in range(6):
        c0 = time.thread_time(); res = code.decode(received, rng=np.random.default_rng(i)); c1 = time.thread_time()
        if i: cpu.append(c1 - c0)
    out[name] = {"decode_cpu_ms_median": round(1e3 * statistics.median(cpu), 1),
                 "min": round(1e3 * min(cpu), 1), "max": round(1e3 * max(cpu), 1),
                 "liars": sorted(res.adversaries), "erasures": sorted(res.erasures)}
print(json.dumps(out))
