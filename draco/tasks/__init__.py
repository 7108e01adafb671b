"""Tasks: what a DRACO run trains, on both sides of the wire.

- ``contract``: the ``Task`` protocol, ``TaskContext``, the devices;
- ``registry``: a task from its spec or from the command line (``make_task``, the flags);
- ``plugins``: the checks before a worker imports a plug-in factory (docs/tasks.md);
- ``sampler``: which samples each partition uses in each round (identical on every host);
- ``lstsq``: least squares in numpy (no torch), the fast test and demo task;
- ``torch``: the torch models, data sets and device settings (the only place torch is used).
"""
