"""Alembic migrations of the service database (imports only the db models)."""
