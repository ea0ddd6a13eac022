"""``python -m transferlab.train``: see :mod:`transferlab.cli.train`."""

from transferlab.cli.train import main

if __name__ == "__main__":
    main()
