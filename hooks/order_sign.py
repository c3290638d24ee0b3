"""order-sign: intercepts immune globulin orders the guideline does not support."""

from __future__ import annotations

from hooks import data_needs
from hooks.service_def import HookRequest, HookResult, ServiceDefinition


def handle(request: HookRequest) -> HookResult:
    return HookResult()


SERVICE = ServiceDefinition(
    id="ivig-order-sign",
    hook="order-sign",
    title="IVIG order check (IgM deficiency guideline)",
    description=(
        "When orders are signed: checks immune globulin (IVIG/SCIG) orders against the guideline for "
        "treatment of IgM deficiency — not indicated on low IgM alone, indicated for IgG deficiency or "
        "impaired pneumococcal response with recurrent severe infections, hyper-IgM pattern — and checks "
        "replacement dose (0.4–0.6 g/kg every 3–4 weeks) and trough monitoring."
    ),
    prefetch=data_needs.PREFETCH,
    usage_requirements=data_needs.USAGE,
    required_prefetch=data_needs.REQUIRED,
    handler=handle,
)
