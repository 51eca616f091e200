"""Datasets, synthetic data, background pools and foreground masks."""
