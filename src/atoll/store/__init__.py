"""Durable state: SQLAlchemy 2 async on SQLite (default) or PostgreSQL, Alembic migrations."""
