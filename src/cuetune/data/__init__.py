"""The data layer: reading files into examples, cleaning, splits and K-shot sampling,
augmentation, and the table of named benchmark tasks. It knows nothing of models."""
