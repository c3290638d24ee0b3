"""order-select: the same IVIG check, earlier — on the orders the clinician has just selected."""

from __future__ import annotations

from functools import partial

from hooks import data_needs
from hooks.order_sign import handle_orders, needs_patient_data, orders_at_once, unresolved_references
from hooks.service_def import HookRequest, HookResult, ServiceDefinition


def handle(request: HookRequest) -> HookResult:
    return handle_orders(request, selections_only=True)


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
    at_once=partial(orders_at_once, selections_only=True),
    needs_patient_data=partial(needs_patient_data, selections_only=True),
    unresolved_references=partial(unresolved_references, selections_only=True),
)
