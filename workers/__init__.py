"""Worker processes (one per task queue), the data converter, client and settings."""
