"""The Celery worker: thin, idempotent tasks that load a row by id, call ``mona_core``, write artifacts and status."""
