"""draco: Byzantine-robust synchronous data-parallel SGD through redundant gradients.

DRACO (Chen, Wang, Charles, Papailiopoulos, ICML 2018): every gradient partition is computed by
r = 2s+1 workers, and the parameter server decodes the exact sum of the partition gradients
despite up to s adversarial workers.

Layout: ``draco.core`` (codes, decoders, aggregators, attacks; numpy only), ``draco.net``
(the wire, the asyncio parameter server and workers), ``draco.ps`` (the parameter server's
round logic and ``run(config)``), ``draco.tasks`` (the task contract, registry and the torch
tasks), the tools' libraries ``draco.launch`` (``draco-run``), ``draco.experiment``
(``draco-experiment``, ``draco-plot``) and ``draco.bench`` (``draco-bench``), and
``draco.cli`` (the console commands: argument parsing and ``main`` only). See
docs/architecture.md.
"""

__version__ = "0.1.0"
