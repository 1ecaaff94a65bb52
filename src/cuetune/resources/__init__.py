"""Packaged resources: the default config and the demo sentiment dataset."""
