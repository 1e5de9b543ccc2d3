"""MLflow, a mirror of a job's results (never a gate on them).

- :mod:`.job`: the reduce's parent run and its children;
- :mod:`.members`: what a member run holds, and live epochs while a member trains;
- :mod:`.model`: the ensemble as a pyfunc model;
- :mod:`.store`: where runs go (URI, experiment), flattening and batched writes.

Kept free of imports so that a light module here (the launch's reachability probe) does not pull
MLflow and torch into the launch process.
"""
