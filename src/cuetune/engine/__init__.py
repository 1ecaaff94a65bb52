"""The engine: a run's parts assembled (`pipeline`), the one forward (`forward`), inference,
decoding, objectives, the training loop, batching, checkpoints and several processes."""
