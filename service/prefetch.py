"""Completing the prefetch a request lacks: from the built-in sample patients, or 412.

Reading from the EHR's ``fhirServer`` is added by the prefetch issue (#6); this module keeps
the decision of what is missing in one place (HAPI FHIR's ``findMissingPrefetch``: declared
minus sent, where null and OperationOutcome count as not sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Mapping

from hooks.service_def import ServiceDefinition
from service.errors import PreconditionFailed
from service.models import CdsRequest
from service.settings import Settings


@dataclass
class CompletedData:
    prefetch: dict[str, Any]
    unavailable: dict[str, str] = field(default_factory=dict)
    extra_resources: list[dict[str, Any]] = field(default_factory=list)
    #: where the data came from: "request", "fhir", "sample" (for logs and metrics)
    sources: set[str] = field(default_factory=set)


def is_missing(value: Any) -> bool:
    """A prefetch value that carries no data for the key."""
    return value is None or (isinstance(value, Mapping) and value.get("resourceType") == "OperationOutcome")


def missing_keys(service: ServiceDefinition, prefetch: Mapping[str, Any]) -> list[str]:
    return [key for key in service.prefetch if key not in prefetch or is_missing(prefetch.get(key))]


class PrefetchCompleter:
    """Fills in missing prefetch keys for one call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def complete(self, req: CdsRequest, service: ServiceDefinition, today: date) -> CompletedData:
        prefetch = {k: v for k, v in req.prefetch.items()}
        if not service.needs_patient_data(req.context, prefetch):
            return CompletedData(prefetch=prefetch, sources={"request"})
        missing = missing_keys(service, prefetch)
        if not missing:
            return CompletedData(prefetch=prefetch, sources={"request"})
        if req.fhir_server is None and self.settings.sample_patients:
            from fhir_fixtures import samples

            sample = samples.prefetch_for(req.patient_id, service.prefetch, today)
            if sample is not None:
                for key in missing:
                    prefetch[key] = sample.get(key)
                return CompletedData(prefetch=prefetch, sources={"sample"})
        required_missing = [key for key in missing if key in service.required_prefetch]
        if req.fhir_server is None:
            if required_missing:
                raise PreconditionFailed(
                    "required prefetch data is missing and the request has no fhirServer to read it from",
                    details=[f"prefetch.{key}: missing ({service.prefetch[key]})" for key in required_missing],
                )
            return CompletedData(
                prefetch=prefetch,
                unavailable={key: "not sent in prefetch and no fhirServer given" for key in missing},
                sources={"request"},
            )
        # Reading from fhirServer comes with issue #6; until then the keys are reported unavailable.
        if required_missing:
            raise PreconditionFailed(
                "required prefetch data is missing and could not be read from fhirServer",
                details=[f"prefetch.{key}: missing" for key in required_missing],
            )
        return CompletedData(prefetch=prefetch, unavailable={key: "could not be read" for key in missing})

    def close(self) -> None:
        return None
