"""``python -m transferlab.predict``: see :mod:`transferlab.cli.predict`."""

from transferlab.cli.predict import main

if __name__ == "__main__":
    main()
