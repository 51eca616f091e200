"""Foreground masks: u2netp pre/post-processing, the onnxruntime and torch engines, mask quality."""
