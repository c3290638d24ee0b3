"""Completing the prefetch a request lacks, from the EHR's FHIR server or the sample patients.

- completion.py: which data is missing, the queries that read it, what a failure means for the
  call (412, 502, or "unavailable" in the cards).
- fhir_client.py: how to read a FHIR server safely: pooled, time-boxed, within a byte allowance,
  same-origin only, token never logged.
- allowlist.py: which FHIR servers the service may contact at all (SSRF protection).

A service package: imports the protocol's request shapes (protocol/models.py), base modules and
hooks/, never a view or the app state.
"""
