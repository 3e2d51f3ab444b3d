"""Training and evaluation of the attribute network (`lookalike train attributes`, `lookalike evaluate attributes`)."""
