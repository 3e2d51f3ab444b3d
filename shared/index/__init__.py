"""shared/index package."""
