"""The pages a person opens in a browser: the SMART on FHIR trend page, and the landing page.

- views.py: SMART EHR launch, the authorization callback, the page, the JSON it draws from, the
  index of built-in scenarios.
- landing.py: ``GET /``, what this service is and where its discovery URL is.
- trend.py: what the trend page draws, read from the engine's facts, cards and trace.
- card_html.py: a card's Markdown detail as sanitised HTML.
- assets/: templates, the page's script and stylesheet, the vendored chart library (licences in
  assets/VENDORED.md).

views.py and landing.py are views (they may import the app state, services and base);
trend.py and card_html.py are services: they import hooks/ and each other, never a view.
"""
