"""lookalike package."""
