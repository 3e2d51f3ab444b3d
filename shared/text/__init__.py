"""shared/text package."""
