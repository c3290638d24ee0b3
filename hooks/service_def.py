"""What a CDS service is, seen from the guideline side: its metadata, its data needs, its handler.

The service layer renders discovery from these definitions, completes the prefetch they
declare, asks ``at_once`` for an answer that needs no reading of the record, and otherwise
calls ``handler`` with a ``HookRequest``. Nothing here knows about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Mapping, Sequence

from hooks.config import DEFAULT_CONFIG, GuidelineConfig


@dataclass(frozen=True)
class HookRequest:
    """One hook call, as the rules need it. ``today`` is an input: rules never read the clock."""

    hook: str
    hook_instance: str
    service_id: str
    context: Mapping[str, Any]
    #: prefetch key -> resource / Bundle / None, after the service completed what it could
    prefetch: Mapping[str, Any]
    today: date
    config: GuidelineConfig = DEFAULT_CONFIG
    #: prefetch key -> why it could not be obtained ("FHIR server timed out", ...)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    #: further resources the service read for us (e.g. Medications behind medicationReference)
    extra_resources: Sequence[Mapping[str, Any]] = ()
    #: the service's public base URL (for SMART links); None when unknown
    base_url: str | None = None
    #: URL of the SMART trend page cards link to (type "smart"); None when not published
    smart_launch_url: str | None = None
    ruleset_version: str = "unversioned"
    tenant: str | None = None


class HookResult:
    """Cards for the EHR, optional system actions, and the decision trace (for humans and logs).

    The trace is given as it is (``trace``) or as the function that builds it (``explain``): an
    EHR's call never reads it, so only its readers (``ivig-cds evaluate``, the trend page) pay for it.
    """

    __slots__ = ("cards", "system_actions", "_trace", "_explain")

    def __init__(self, cards: list[dict[str, Any]] | None = None,
                 system_actions: list[dict[str, Any]] | None = None, trace: dict[str, Any] | None = None,
                 explain: Callable[[], dict[str, Any]] | None = None) -> None:
        self.cards = cards if cards is not None else []
        self.system_actions = system_actions if system_actions is not None else []
        self._trace = trace
        self._explain = explain

    @property
    def trace(self) -> dict[str, Any]:
        if self._trace is None:
            self._trace = self._explain() if self._explain is not None else {}
        return self._trace

    def response_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"cards": self.cards}
        if self.system_actions:
            body["systemActions"] = self.system_actions
        return body


@dataclass(frozen=True)
class ServiceDefinition:
    """A CDS service (one per hook), as discovery publishes it."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    #: the decision: reads the record and applies the rules (right for every record)
    handler: Callable[[HookRequest], HookResult]
    usage_requirements: str | None = None
    #: keys without which no decision is possible (412 when they cannot be obtained)
    required_prefetch: frozenset[str] = frozenset()
    #: whether this call needs patient data at all (order-sign without an IVIG order does not)
    needs_patient_data: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] = lambda context, prefetch: True
    #: medicationReference targets the handler needs but the request does not contain
    unresolved_references: Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]] = lambda context, prefetch: []
    #: the answer when it is plain without reading the record (nothing in it to decide), else None.
    #: Most calls are such; the service layer asks it before its answer memo, whose key costs more.
    at_once: Callable[[HookRequest], HookResult | None] = lambda request: None

    def discovery_entry(self, extension: Mapping[str, Any] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
        }
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        if extension:
            entry["extension"] = dict(extension)
        return entry
