"""`lookalike evaluate edits`: attribute and colour edits on the test split."""
