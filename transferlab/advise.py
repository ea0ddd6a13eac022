"""``python -m transferlab.advise``: see :mod:`transferlab.cli.advise`."""

from transferlab.cli.advise import main

if __name__ == "__main__":
    main()
