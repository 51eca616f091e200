"""SmoothGrad saliency and the attention score."""
