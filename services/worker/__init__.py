"""services.worker (built with the service issue)."""
