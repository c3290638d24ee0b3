"""The CDS Hooks 2.0.1 edge: what a CDS client sends and what it gets back.

- cds.py: discovery, hook invocation and feedback (views), and what the other views share of
  them (``json_response``, ``base_url``, ``today``).
- openapi.py: ``GET /openapi.json``, built from the running app (view).
- models.py: request and feedback shapes, checked leniently where the spec lets EHRs vary.
- jsonbody.py: reading a JSON body within bounds of size, depth and memory.
- guards.py: limits no parser enforces (resources per call, the fhirServer allowlist).
- cors.py: CORS for browser clients such as the CDS Hooks sandbox.
- answers.py: the memo of answers to a request sent again.

The views may import app state, services and base; the other modules import services and base
only (models.py: errors.py alone, since the services read its shapes).
"""
