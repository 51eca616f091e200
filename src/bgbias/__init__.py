"""bgbias: background bias in deep metric learning, reproduced as a tracked study."""

__version__ = "0.1.0"
