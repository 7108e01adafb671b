"""Starting a cluster's processes: ``draco-run``'s localhost launcher, the credentials, and
a worker process's ids under a cluster launcher.

- ``plan``: what a run starts: the run directory, its credentials, the PS's flags, the
  worker processes' command lines (``new_plan``, ``resume_plan``, ``split_workers``);
- ``credentials``: the cluster secret and the worker tokens on disk (``draco-ps keys``,
  ``draco-run``, a ``draco-worker`` process's tokens);
- ``processes``: child processes in their own process groups: spawn, stop, wait for the
  PS's ready file, signals held off during a shutdown;
- ``local``: ``run_local(options, passthrough)``, the library entry point of ``draco-run``:
  plan, start the PS and the workers, supervise them;
- ``env``: which worker ids a ``draco-worker`` process runs (flags, SLURM, torchrun).
"""
