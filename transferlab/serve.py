"""``python -m transferlab.serve``: see :mod:`transferlab.cli.serve`."""

from transferlab.cli.serve import main

if __name__ == "__main__":
    main()
