"""services.api (built with the service issue)."""
