"""skinhpc: skin-lesion classifiers trained as SLURM array jobs.

Importing the package sets up the process (allocator that keeps freed memory, one thread per
CPU of the task; see :mod:`skinhpc.runtime`), so every entry point gets it: the CLIs, SLURM
and local tasks, DataLoader workers, ``accelerate launch`` processes and the MLflow pyfunc.
``SKINHPC_MALLOC=system`` keeps glibc's defaults.
"""

from skinhpc import runtime

runtime.configure()
