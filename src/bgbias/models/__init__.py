"""Backbones and the embedding model: `create_model` is the one entry point."""

from bgbias.models.embedder import Embedder, StartingPoint, create_model, initial_model

__all__ = ["Embedder", "StartingPoint", "create_model", "initial_model"]
