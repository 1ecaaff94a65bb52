"""Scores and plots: classification metrics (scikit-learn), generation metrics (sacrebleu,
rouge-score) and the PNG figures runs and reports write. Nothing here knows a model."""
