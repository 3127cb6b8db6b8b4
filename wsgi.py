"""The web process entry point: `gunicorn wsgi:app` (see Procfile)."""

from webapp import create_app

app = create_app()
