"""The private Lightning APIs transferlab relies on, imported here only, each with the reason.

Lightning has no public equivalent for these. Each is checked against the Lightning versions that
CI installs (constraints.txt and constraints-min.txt); a rename breaks this module's imports, in
one place, rather than code deep in a run.
"""

# The global RNG states (Python, NumPy, torch, CUDA) as Lightning collects them for its own
# seed_everything/fault-tolerant loops: a resumed run restores them to draw the same augmentation.
from lightning.fabric.utilities.seed import _collect_rng_states as collect_rng_states
from lightning.fabric.utilities.seed import _set_rng_states as set_rng_states

# The launcher that starts DDP processes by re-running this process's command line: inside a Hydra
# multirun that command is the whole sweep, so such runs are refused (transferlab.ranks.check_launch).
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher as SubprocessScriptLauncher

__all__ = ["SubprocessScriptLauncher", "collect_rng_states", "set_rng_states"]
