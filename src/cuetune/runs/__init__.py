"""Runs: training a run and loading it back, its folder (adapter, manifest), and what is made
from finished runs: ensembles, distilled students, PEFT adapters, merged models and GGUF."""
