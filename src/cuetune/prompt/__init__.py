"""The prompt layer: templates, verbalizers, the encoder that turns (template, example) into
token ids for a model family, batches, and demonstrations put before an input."""
