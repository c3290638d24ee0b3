"""FHIR R4 scenario data, one folder per clinical situation, shipped inside the package.

Each scenario folder holds ``bundle.json`` (a FHIR Bundle of one patient's record, dated as of
``expected.json``'s ``today``) and ``expected.json`` (the topics each hook must answer with).
``load_scenario`` can shift every date so that the record is as recent relative to another day.
"""
