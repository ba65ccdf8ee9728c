"""Sweeps (``lungcls-sweep``): W&B sweep files translated into Hydra multirun / Optuna arguments,
so one file runs on W&B and locally."""
