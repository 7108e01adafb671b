"""The measuring code of the ``draco-bench`` subcommands (their flags: ``draco.cli.bench*``).

- ``common``: a median timer, the machine a measurement ran on, a subcommand's run skeleton;
- ``decode``: DRACO's decoders against numpy's mean and the robust aggregators;
- ``adversary``: both codes against every lie family, judged and timed;
- ``net``: the PS's ingest of one round against a raw-socket baseline;
- ``vote``: whole PS rounds, full-payload vs digest-first vote (``draco-bench net --vote``);
- ``siege``: rounds per second of an honest run alone and under a flood of idle connections.

Each module's docstring is its subcommand's ``--help`` description.
"""
