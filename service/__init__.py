"""The CDS Hooks protocol layer of ivig-cds (Flask): thin, with every HTTP answer made at one edge.

What lives where:

    app.py        the factory: settings in, a wired Flask app out (create_app, close_app)
    state.py      AppState, the app's long-lived parts, and state() for the views
    settings.py   typed settings from defaults, profile, TOML file and IVIG_CDS_* variables
    errors.py     CdsError and its kinds; the one place where a failure becomes an HTTP answer
    cli.py        the ivig-cds command;  wsgi.py  the WSGI app for gunicorn
    protocol/     the CDS Hooks edge: discovery, hook and feedback endpoints, request shapes,
                  body reading, guards, CORS, the answer memo, GET /openapi.json
    prefetch/     completing a request's prefetch: the FHIR client, the fhirServer allowlist
    auth/         CDS client JWTs: verification, trusted issuers' keys, the jti replay store
    storage/      the database: issued cards and feedback, SMART sessions, migrations, reports,
                  GET /analytics/overrides
    smart/        the SMART trend page and the landing page: views, what the page draws, assets
    ops/          health and readiness, metrics, logging, the production server (gunicorn)
    governance/   offline tools: explain, the configuration reference, evaluate, load-fixtures

Imports run one way, from the top down, never back up (tests/test_import_layers.py holds the
layer of every module and fails on an import against it, or on any import cycle):

    entry points (cli, wsgi, ops/gunicorn_conf, ops/production, governance/)
      -> app factory (app)
      -> views (protocol/cds, protocol/openapi, ops/health, ops/metrics_view, smart/views,
                smart/landing, storage/analytics)
      -> app state (state)
      -> services (the rest of protocol/, prefetch/, auth/, storage/, smart/)
      -> base (settings, errors, ops/logging, ops/metrics)
      -> hooks/ and fhir_fixtures/, which never import service/.

A package's ``__init__`` is its docstring only, so importing one part of a package loads no other.
"""
