"""Foundations every layer uses: typed params, folder layout, errors, files, seeds, images, assets, the Tracker protocol."""
