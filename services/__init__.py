"""The service around mona_core: API, workers, shared settings and storage (see issue "The service")."""
