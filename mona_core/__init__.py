"""mona_core: the ML library of MONA as a service.

Stages in pipeline order: ``io`` → ``data`` → ``models`` → ``losses`` → ``training`` → ``export`` → ``inference`` →
``metrics``. The library knows nothing of HTTP, SQL, Celery or environment variables.
"""

__version__ = "0.1.0"
