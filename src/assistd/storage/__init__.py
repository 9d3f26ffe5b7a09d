"""Storage: one schema on SQLite (default) or PostgreSQL, and every query the server runs."""
