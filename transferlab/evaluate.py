"""``python -m transferlab.evaluate``: see :mod:`transferlab.cli.evaluate`."""

from transferlab.cli.evaluate import main

if __name__ == "__main__":
    main()
