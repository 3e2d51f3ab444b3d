"""Retrieval features: tuning the appearance/colour features and evaluating retrieval."""
