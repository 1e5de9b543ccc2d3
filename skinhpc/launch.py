"""`python -m skinhpc.launch JOB.yaml [key=value ...]`: the entry point users type; the work is in
:mod:`skinhpc.orchestrate.launch`."""

import sys

from skinhpc.orchestrate.launch import main

if __name__ == "__main__":
    sys.exit(main())
