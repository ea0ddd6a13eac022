"""``python -m transferlab.find_lr``: see :mod:`transferlab.cli.find_lr`."""

from transferlab.cli.find_lr import main

if __name__ == "__main__":
    main()
