"""shared/codes package."""
