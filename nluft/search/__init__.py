"""Hyperparameter search: the space from the config (space), the Optuna study (study), the
workers that run trials as normal runs (runner), and its tables and plots (results)."""
