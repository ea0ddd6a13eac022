"""Command-line entry points (``python -m transferlab.<command>``) and their key=value parser."""
