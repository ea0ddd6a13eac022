"""A training run's machinery: callbacks, resumption, results and sweep reports."""
