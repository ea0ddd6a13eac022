"""``python -m transferlab.report``: see :mod:`transferlab.run.report`."""

import sys

from transferlab.run.report import main

if __name__ == "__main__":
    sys.exit(main())
