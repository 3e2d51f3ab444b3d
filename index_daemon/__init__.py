"""index_daemon package."""
