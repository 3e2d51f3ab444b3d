"""Title -> category model: training and evaluation (`lookalike train text`, `lookalike evaluate text`)."""
