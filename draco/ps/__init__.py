"""The parameter server: its round logic, configuration, optimizer, run directory, records.

- ``engine``: ``RoundEngine``, synchronous rounds: plan, collect, decode, update, record;
- ``collector``: ``RoundCollector``, one attempt's answers validated as they arrive;
- ``plan``: who lies in a round and how (seeded liars, attack seeds, ``RoundPlan``);
- ``digest_vote``: the ``--vote`` choices and the digest-first vote's limits;
- ``cluster_time``: a round's critical path on a modelled cluster;
- ``config``: ``PSConfig``, every flag of ``draco-ps`` checked in one place;
- ``optim``: SGD with momentum on the flat parameter vector (torch's rule, in numpy);
- ``rundir``: the run directory (config, metrics, checkpoints, summary; atomic writes);
- ``recorder``: per-round side work (evaluation, metrics, checkpoints, progress line);
- ``service``: ``run(config)``, the library entry point ``draco-ps`` and the tests call.

Everything here but ``service`` is pure logic (no sockets, no event loop); ``service``
composes it with the asyncio shell, ``draco.net.server``.
"""
