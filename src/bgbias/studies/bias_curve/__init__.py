"""The bias curve: MAP@R against background correlation and BGAugment probability."""
