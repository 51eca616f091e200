"""Retrieval metrics on the test split: clean, replaced backgrounds and the background-swap conditions."""
