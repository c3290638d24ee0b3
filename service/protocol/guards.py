"""Edge checks on a hook call that no parser does: how much FHIR data, and which FHIR server.

Both run in the invoke path (service/protocol/cds.py) before any prefetch work: a request with 100 000
resources is refused before the rules parse one of them (413), and a ``fhirServer`` outside
``security.fhir_server_allowlist`` is refused before anything could contact it (400, SSRF).

``configure`` applies the rest of ``limits`` that bound what one call may cost: the bytes of
bodies a worker works on at once (service/protocol/jsonbody.py), and the size of one resource the rules
read and of the cache of validated resources (hooks/fhir_read.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from service.errors import BadRequest, PayloadTooLarge
from service.prefetch.allowlist import fhir_server_allowed
from service.protocol.models import CdsRequest

if TYPE_CHECKING:
    from service.settings import LimitSettings


def configure(limits: "LimitSettings") -> None:
    """Size the process-wide bounds from ``limits`` (service/app.py, when an app is made); the cache of
    validated resources is each app's own (``AppState.models``)."""
    from hooks import fhir_read
    from service.protocol.jsonbody import BODIES

    BODIES.capacity = limits.worker_body_bytes
    fhir_read.MAX_RESOURCE_BYTES = limits.max_resource_bytes


def count_resources(values: Iterable[Any], stop_after: int) -> int:
    """Objects with a ``resourceType`` anywhere inside ``values`` (Bundle entries, contained, ...).

    Iterative (deep input cannot overflow the stack); stops counting once past ``stop_after``.
    """
    count = 0
    stack = [v for v in values if isinstance(v, (dict, list))]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("resourceType"), str):
                count += 1
                if count > stop_after:
                    return count
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        else:
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return count


#: The shortest text of a counted resource: ``{"resourceType":""}``
_SMALLEST_RESOURCE = 19


def check_resource_count(body: Any, max_resources: int, raw: bytes | None = None) -> None:
    """413 when the prefetch values and the context (draftOrders) carry too many resources.

    ``raw`` (the body's bytes) allows a C-speed upper bound first: every resource has a
    ``"resourceType"`` key, so when the text occurs no more often than the limit, no walk is needed.
    """
    if not isinstance(body, dict):
        return  # not a request at all: the envelope check answers 400
    if raw is not None and (len(raw) < _SMALLEST_RESOURCE * (max_resources + 1)
                            or raw.count(b'"resourceType"') <= max_resources):
        return  # too short to hold more, or fewer "resourceType" keys than the limit
    values: list[Any] = []
    for part in ("prefetch", "context"):
        if isinstance(body.get(part), dict):
            values.extend(body[part].values())
    if count_resources(values, max_resources) > max_resources:
        raise PayloadTooLarge(
            f"the request carries more than {max_resources} FHIR resources (limits.max_resources)")


def check_fhir_server(cds_request: CdsRequest, allowlist: list[str]) -> None:
    """400 when the request names a fhirServer this service must not contact."""
    if cds_request.fhir_server is not None and not fhir_server_allowed(cds_request.fhir_server, allowlist):
        raise BadRequest(
            "fhirServer is not allowed: this service only contacts FHIR servers on its configured "
            "allowlist (security.fhir_server_allowlist)")
