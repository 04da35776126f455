"""services.common (built with the service issue)."""
