"""The clinical knowledge of ivig-cds: the IgM-deficiency guideline as pure Python.

No Flask, no I/O, no clock: ``SERVICES`` lists one definition per hook; the service layer
publishes and calls them.
"""

from __future__ import annotations

from hooks.service_def import HookRequest, HookResult, ServiceDefinition


def _services() -> dict[str, ServiceDefinition]:
    from hooks import order_select, order_sign, patient_view

    return {s.id: s for s in (patient_view.SERVICE, order_sign.SERVICE, order_select.SERVICE)}


SERVICES: dict[str, ServiceDefinition] = _services()

__all__ = ["SERVICES", "HookRequest", "HookResult", "ServiceDefinition"]
