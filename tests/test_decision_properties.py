"""The headline, as properties over generated patients, judged by an oracle written from criteria.md:

* a patient who needs IVIG (hyper-IgM pattern; IgG deficiency or impaired PPSV23 response with
  recurrent severe infections; low IgM with a life-threatening or two encapsulated-organism
  infections) is never told an IVIG order is not indicated;
* for everyone else an IVIG order for replacement is intercepted (IVIG is never started on a low
  IgM alone);
* an IVIG order always gets an answer.
"""

from __future__ import annotations

from datetime import date

from hypothesis import given, settings, strategies as st

import hooks
from fhir_fixtures.builder import Record, ago, draft_orders, ivig_order
from hooks.service_def import HookRequest
from tests.cds_validate import response_problems, topics

TODAY = date(2026, 11, 24)

patients = st.fixed_dictionaries({
    "igm": st.sampled_from([None, 20, 39, 40, 80]),
    "igg": st.sampled_from([None, 300, 450, 500, 900]),
    "iga": st.sampled_from([3, 150]),
    "pneumo": st.sampled_from(["none", "adequate", "impaired", "no-pre"]),
    "severe": st.integers(0, 3),
    "life_threatening": st.integers(0, 1),
    "encapsulated": st.integers(0, 2),
    "minor": st.integers(0, 3),
    "subsets": st.booleans(),
})


def build(p: dict) -> Record:
    rec = Record("gen", birth="1980-01-01")
    if p["igm"] is not None:
        rec.igm(p["igm"], when=ago(days=20))
    if p["igg"] is not None:
        rec.igg(p["igg"], when=ago(days=20))
    rec.iga(p["iga"], when=ago(days=20))
    if p["pneumo"] != "none":
        rec.ppsv23_challenge(protective_post=8 if p["pneumo"] == "impaired" else 20, pre=p["pneumo"] != "no-pre")
    if p["subsets"]:
        rec.lymphocyte_subsets()
    rec.office_visit(ago(days=10))
    month = 1
    for _ in range(p["severe"]):
        rec.pneumonia(ago(months=month), code="J18.9", display="Pneumonia, unspecified organism")
        month += 1
    for _ in range(p["life_threatening"]):
        rec.infection("A41.9", "Sepsis, unspecified organism", ago(months=month), hospitalised=True)
        month += 1
    for _ in range(p["encapsulated"]):
        rec.pneumonia(ago(months=month), code="J13", display="Pneumonia due to Streptococcus pneumoniae")
        month += 1
    for _ in range(p["minor"]):
        rec.uri(ago(months=month, days=15))
        month += 1
    return rec


def needs_ivig(p: dict) -> bool:
    igm_low = p["igm"] is not None and p["igm"] < 40
    igm_normal = p["igm"] is not None and p["igm"] >= 40
    igg_low = p["igg"] is not None and p["igg"] < 500
    iga_low = p["iga"] < 7
    severe = p["severe"] + p["life_threatening"] + p["encapsulated"]
    return ((igg_low and iga_low and igm_normal)
            or (igg_low and severe >= 2)
            or (p["pneumo"] == "impaired" and severe >= 2)
            or (igm_low and (p["life_threatening"] >= 1 or p["encapsulated"] >= 2)))


@settings(max_examples=300, deadline=None)
@given(patients)
def test_ivig_order_decisions_follow_the_guideline(p):
    rec = build(p)
    service = hooks.SERVICES["ivig-order-sign"]
    result = service.handler(HookRequest(
        hook="order-sign", hook_instance="h", service_id=service.id,
        context={"userId": "Practitioner/1", "patientId": "gen", "draftOrders": draft_orders(ivig_order("gen"))},
        prefetch={"record": rec.bundle()}, today=TODAY))
    body = result.response_body()
    got = set(topics(body))
    assert response_problems(body) == []
    assert result.trace["decision"] is not None
    if needs_ivig(p):
        assert "ivig-not-indicated" not in got, (p, got, result.trace["decision"])
        assert got & {"ivig-indicated", "hyper-igm-pattern"}, (p, got)
    else:
        assert "ivig-not-indicated" in got, (p, got, result.trace["decision"])
