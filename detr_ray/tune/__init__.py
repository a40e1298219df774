"""Hyperparameter sweeps: search spaces (pure) and Ray Tune runs (the edge)."""
