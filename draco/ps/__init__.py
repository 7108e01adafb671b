"""The parameter server: its configuration, optimizer, run directory and round records.

- ``config``: ``PSConfig``, every flag of ``draco-ps`` checked in one place;
- ``optim``: SGD with momentum on the flat parameter vector (torch's rule, in numpy);
- ``rundir``: the run directory (config, metrics, checkpoints, summary; atomic writes);
- ``recorder``: per-round side work (evaluation, metrics, checkpoints, progress line);
- ``service``: ``run(config)``, the library entry point ``draco-ps`` and the tests call.

The round engine (``draco.net.rounds``) and the asyncio shell (``draco.net.server``) are
driven from here.
"""
