"""shared/db package."""
