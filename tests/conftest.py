"""Registers the plugins under tests/plugins/, one concern each, the one place test modules get
what they share (as fixtures requested by argument, never by import: tests/test_architecture.py):

- ``plugins.locations``: the checkout, the shared data and weights, CI or not, a user's shell
  environment, the shipped jobs (``shipped_job``);
- ``plugins.jobs``: a tiny real job on that data (a spec, prepared, or trained and reduced once
  per session) and fast job files for launch's command line;
- ``plugins.slurm_cluster``: the single-node SLURM dev cluster;
- ``plugins.xdist_grouping``: the SLURM tests on one xdist worker, one at a time;
- ``plugins.bad_files``: hostile input files made on the spot;
- ``plugins.http_server``: a real HTTP server on loopback (the download tests).
"""

pytest_plugins = [
    "plugins.locations",
    "plugins.jobs",
    "plugins.slurm_cluster",
    "plugins.xdist_grouping",
    "plugins.bad_files",
    "plugins.http_server",
]
