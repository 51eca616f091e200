"""Backbones and the embedding model: `create_model` is the one entry point."""

from bgbias.models.embedder import Embedder, create_model

__all__ = ["Embedder", "create_model"]
