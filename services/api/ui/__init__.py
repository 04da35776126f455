"""The web console at ``/ui``: server-rendered pages (Jinja2) and a little JavaScript, no build step."""
