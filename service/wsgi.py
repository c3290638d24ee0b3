"""WSGI entry point for gunicorn: ``gunicorn service.wsgi:app``. Settings from the environment."""

from service.app import create_app, register_shutdown
from service.ops.logging import configure_logging
from service.settings import load_settings

settings = load_settings()
configure_logging(settings.log_level)
app = create_app(settings)
register_shutdown(app)
