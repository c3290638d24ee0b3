"""patient-view: advice when a chart with low IgM (or IVIG treatment) is opened."""

from __future__ import annotations

from hooks import data_needs
from hooks.service_def import HookRequest, HookResult, ServiceDefinition


def handle(request: HookRequest) -> HookResult:
    return HookResult()


SERVICE = ServiceDefinition(
    id="ivig-patient-view",
    hook="patient-view",
    title="IgM deficiency and IVIG stewardship",
    description=(
        "When a chart is opened: recognises low IgM, hyper-IgM pattern, incomplete immunology work-up, "
        "labs confounded by recent IVIG, and trough monitoring for patients on IVIG, per the guideline "
        "for treatment of IgM deficiency."
    ),
    prefetch=data_needs.PREFETCH,
    usage_requirements=data_needs.USAGE,
    required_prefetch=data_needs.REQUIRED,
    handler=handle,
)
