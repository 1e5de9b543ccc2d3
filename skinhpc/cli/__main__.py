"""`python -m skinhpc.cli COMMAND ...`: the same as the `skinhpc` console script."""

import sys

from skinhpc.cli.main import main

sys.exit(main())
