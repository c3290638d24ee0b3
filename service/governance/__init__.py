"""Offline tools for the people who approve, configure and test the service.

- explain.py: ``ivig-cds explain``, the rules, thresholds and value sets actually loaded
  (``python -m service.governance.explain --write docs/clinical-logic.md``).
- config_reference.py: the README's configuration reference, generated from the settings
  (``python -m service.governance.config_reference --write README.md``).
- evaluate.py: ``ivig-cds evaluate``, the cards and trace for a Bundle or a request, offline.
- load_fixtures.py: ``ivig-cds load-fixtures``, the sample patients into an R4 server.

Entry points: reached from the command line, they may import anything below them; none of them
needs the app.
"""
