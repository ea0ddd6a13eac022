"""transferlab's Hydra configuration, installed as the package ``transferlab.conf`` (see pyproject.toml)."""
