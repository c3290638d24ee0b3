"""Running the service: health, metrics, logs, and the production server.

- health.py: ``GET /healthz`` and ``GET /readyz`` (views).
- metrics.py: the Prometheus figures, their exposition and the metrics port (base: any module
  may record a figure); metrics_view.py: ``GET /metrics`` on the service's own port (view).
- logging.py: structured JSON logs with a request id (base).
- production.py: ``ivig-cds serve --production``, gunicorn in this process (entry point).
- gunicorn_conf.py: the production gunicorn settings, read by that command and by
  ``gunicorn -c deploy/gunicorn.conf.py`` (entry point).

This package spans layers: the base modules import settings.py alone, the views the app state
and below, the entry points the app factory and below.
"""
