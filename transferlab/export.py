"""``python -m transferlab.export``: see :mod:`transferlab.cli.export`."""

from transferlab.cli.export import main

if __name__ == "__main__":
    main()
