"""Cluster jobs: job specs (pure) and the Ray Jobs API client (edge)."""
