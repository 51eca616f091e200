"""Retrieval metrics at Stanford Online Products scale: 60,502 test embeddings (128-d) in
SOP-like classes (2-12 images each, 11,316 classes in the real set), through the same
`retrieval_metrics` the evaluate stage uses (AccuracyCalculator, k="max_bin_count",
faiss). Prints the time and the process's peak memory; the target is to fit in 24 GiB
on CPU.

    python benchmarks/evaluate_scale.py [--images 60502] [--dim 128]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from bgbias.engine.embed import retrieval_metrics


def sop_like_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, 13)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 2:  # keep every class retrievable
        sizes[-2] += sizes.pop()
    return np.repeat(np.arange(len(sizes)), sizes)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = sop_like_labels(args.images, rng)
    # Class centres plus noise, normalised: metrics are neither 0 nor 1, as with a real model.
    centres = rng.standard_normal((labels.max() + 1, args.dim)).astype(np.float32)
    embeddings = centres[labels] + 1.2 * rng.standard_normal((args.images, args.dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    before = peak_rss_gib()

    start = time.perf_counter()
    metrics = retrieval_metrics(embeddings, labels)
    seconds = time.perf_counter() - start

    print(f"{args.images} embeddings x {args.dim}-d, {labels.max() + 1} classes "
          f"(sizes {np.bincount(labels).min()}-{np.bincount(labels).max()})")
    print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"time: {seconds:.1f} s")
    print(f"peak memory (process RSS): {peak_rss_gib():.2f} GiB (before the metrics: {before:.2f} GiB); "
          f"limit 24 GiB")


if __name__ == "__main__":
    main()
