"""shared/vision package."""
