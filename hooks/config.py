"""Every clinical threshold the rules use, in one validated object.

The defaults are those of ../shared/guideline/criteria.md. Rules never hold a number of their
own: they read it from here, so a committee can see (``ivig-cds explain``) and change (a
config file or ``IVIG_CDS_<FIELD>``) exactly what runs. Loading files and environment is the
service's job; this module only defines and checks the values.
"""

from __future__ import annotations


from pydantic import BaseModel, ConfigDict, Field, model_validator


def _t(default: float | int, description: str, unit: str, source: str, *, ge: float | None = None):
    """A threshold field: its default, what it means, its unit and where the number comes from.

    Positive (or at least ``ge``) and finite: an infinite or NaN threshold would make a rule fire
    always or never without anyone seeing why, so such a configuration is refused at start-up.
    """
    bounds = {"ge": ge} if ge is not None else {"gt": 0}
    return Field(
        default,
        description=description,
        json_schema_extra={"unit": unit, "source": source},
        allow_inf_nan=False,
        **bounds,
    )


#: The top of the guideline's trough target range (criteria.md: ">= 600–800 mg/dL"). Only advice
#: text quotes it; the rules compare with ``trough_target_mg_dl``.
TROUGH_RANGE_TOP_MG_DL = 800


class GuidelineConfig(BaseModel):
    """The thresholds of the IgM-deficiency guideline. Frozen: one object per running ruleset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- immunoglobulin levels ---
    igm_low_mg_dl: float = _t(
        40, "Serum IgM below this is low (adults; children use the lab's age-specific range)",
        "mg/dL", "criteria.md Facts: IgM level")
    igg_deficient_mg_dl: float = _t(
        500, "Serum IgG below this counts as IgG deficiency for the IVIG decision (guideline: < 400–500)",
        "mg/dL", "criteria.md Facts: IgG level; Decision 3")
    igg_borderline_from_mg_dl: float = _t(
        400, "IgG from this value up to the deficiency threshold is reported as borderline",
        "mg/dL", "criteria.md Facts: IgG level (borderline 400–499)")
    iga_low_mg_dl: float = _t(
        7, "Serum IgA below this is low when the lab gives no reference range",
        "mg/dL", "criteria.md Facts: IgA level")
    adult_age_years: float = _t(
        18, "From this age the fixed adult thresholds apply; younger patients use the lab's range",
        "years", "criteria.md Facts: IgM level; Children")

    # --- pneumococcal (PPSV23) response ---
    titer_protective_ug_ml: float = _t(
        1.3, "A serotype-specific IgG titer at or above this is protective",
        "ug/mL", "criteria.md Facts: pneumococcal response; Orange 2012")
    ppsv23_protective_fraction: float = Field(
        0.70, gt=0, le=1, allow_inf_nan=False, description="Below this fraction of protective serotypes after PPSV23 the response is impaired (age >= young-child age)",
        json_schema_extra={"unit": "fraction", "source": "criteria.md Facts: pneumococcal response (70 %)"})
    ppsv23_protective_fraction_young_child: float = Field(
        0.50, gt=0, le=1, allow_inf_nan=False, description="The same, for children younger than the young-child age",
        json_schema_extra={"unit": "fraction", "source": "criteria.md Facts: pneumococcal response (50 % under 6 y)"})
    young_child_age_years: float = _t(
        6, "Below this age the young-child fraction applies", "years",
        "criteria.md Facts: pneumococcal response")
    post_titer_min_days: int = _t(
        28, "Post-vaccination titers count from this many days after PPSV23", "days",
        "criteria.md Facts: post = 4–8 weeks after PPSV23")
    post_titer_max_days: int = _t(
        56, "... up to this many days after PPSV23", "days",
        "criteria.md Facts: post = 4–8 weeks after PPSV23")

    # --- infections ---
    infection_window_months: int = _t(
        12, "Infections are counted within this many months before today", "months",
        "criteria.md Facts: severe bacterial infection (last 12 months)")
    recurrent_severe_infection_count: int = _t(
        2, "This many severe bacterial infections in the window are 'recurrent severe'", "count",
        "criteria.md Facts: recurrent severe >= 2 in 12 months (text: 2–3 per year)")
    encapsulated_infection_count: int = _t(
        2, "This many severe infections by encapsulated bacteria make IVIG worth considering regardless of IgG",
        "count", "criteria.md Decision 5")
    life_threatening_infection_count: int = _t(
        1, "This many life-threatening infections make IVIG worth considering regardless of IgG",
        "count", "criteria.md Decision 5 (one suffices)")
    infection_episode_merge_days: int = _t(
        14, "Infection records of the same kind this close together are one episode (a pneumonia "
        "Condition and its admission are counted once)", "days", "ivig-cds counting convention")

    # --- IVIG history ---
    ivig_confounding_months: int = _t(
        6, "Ig levels and titers drawn within this many months after IVIG/SCIG are not interpretable",
        "months", "criteria.md Facts: prior IVIG/SCIG; Decision 2")
    on_treatment_days: int = _t(
        90, "A patient whose last IVIG/SCIG dose is this recent (or who has an active order) is on treatment",
        "days", "ivig-cds convention (3 months, the stable trough interval)")

    # --- data freshness ---
    stale_lab_months: int = _t(
        12, "A result older than this is stale and treated as missing for the decision", "months",
        "criteria.md Facts: stale result")
    weight_stale_months: int = _t(
        12, "A body weight older than this is not used to check a dose", "months",
        "criteria.md Facts: body weight (latest)")

    # --- treatment ---
    trough_target_mg_dl: float = _t(
        600, "On IVIG, a trough IgG below this needs a dose review (target >= 600–800)", "mg/dL",
        "criteria.md On treatment: trough target")
    trough_overdue_months: int = _t(
        3, "On IVIG, no trough IgG within this many months is overdue", "months",
        "criteria.md On treatment: every 3 months once stable")
    trough_overdue_months_active_infection: int = _t(
        1, "On IVIG during an active severe infection, no trough IgG within this many months is overdue",
        "months", "criteria.md On treatment: monthly during active infection")
    trough_max_days_before_infusion: int = _t(
        3, "A level drawn at most this many days before an infusion (or on its day, before it) is that "
        "infusion's trough; a level drawn days after an infusion is a mid-interval level", "days",
        "criteria.md On treatment: trough measured just before an infusion", ge=0)
    active_infection_days: int = _t(
        30, "A severe infection whose record gives no clinical status counts as active this many days "
        "after its onset (an active, recurrent or relapsed one counts until it is resolved)", "days",
        "ivig-cds convention (about a month)")
    dose_min_g_per_kg: float = _t(
        0.4, "Lowest replacement dose", "g/kg", "criteria.md On treatment: 0.4–0.6 g/kg")
    dose_max_g_per_kg: float = _t(
        0.6, "Highest replacement dose", "g/kg", "criteria.md On treatment: 0.4–0.6 g/kg")
    interval_min_weeks: float = _t(
        3, "Shortest replacement interval", "weeks", "criteria.md On treatment: every 3–4 weeks")
    interval_max_weeks: float = _t(
        4, "Longest replacement interval", "weeks", "criteria.md On treatment: every 3–4 weeks")
    immunomodulatory_dose_min_g_per_kg: float = _t(
        1.0, "A dose from this (with another indication as reason) is immunomodulatory, outside this guideline",
        "g/kg", "criteria.md: immunomodulatory dose 1–2 g/kg")
    immunomodulatory_dose_max_g_per_kg: float = _t(
        2.0, "Upper end of the immunomodulatory dose range", "g/kg",
        "criteria.md: immunomodulatory dose 1–2 g/kg")

    # --- plausibility: a value outside these bounds is a unit or typing error, never a fact
    igg_plausible_max_mg_dl: float = _t(
        15000, "A serum IgG above this is not a possible human value (unit or typing error): not used",
        "mg/dL", "physiological bound (IgG myeloma rarely exceeds 10 000 mg/dL)")
    igm_plausible_max_mg_dl: float = _t(
        10000, "A serum IgM above this is not a possible human value: not used", "mg/dL",
        "physiological bound (Waldenström macroglobulinaemia rarely exceeds 7 000 mg/dL)")
    iga_plausible_max_mg_dl: float = _t(
        10000, "A serum IgA above this is not a possible human value: not used", "mg/dL",
        "physiological bound (IgA myeloma rarely exceeds 7 000 mg/dL)")
    titer_plausible_max_ug_ml: float = _t(
        500, "A serotype-specific pneumococcal IgG above this is not a plausible result: not used", "ug/mL",
        "physiological bound (post-vaccination titers are rarely above 100 ug/mL)")
    weight_plausible_min_kg: float = _t(
        0.3, "A body weight below this is not possible: not used", "kg", "physiological bound (newborn)")
    adult_weight_plausible_min_kg: float = _t(
        20, "An adult's body weight below this is not plausible (unit or typing error): not used", "kg",
        "physiological bound (adults)")
    weight_plausible_max_kg: float = _t(
        400, "A body weight above this is not plausible: not used", "kg", "physiological bound")

    # --- the treatment thresholds as advice text (cards quote what the rules check) ---

    def replacement_regimen(self) -> str:
        """'0.4–0.6 g/kg every 3–4 weeks' from the dose and interval thresholds."""
        return (f"{self.dose_min_g_per_kg:g}–{self.dose_max_g_per_kg:g} g/kg every "
                f"{self.interval_min_weeks:g}–{self.interval_max_weeks:g} weeks")

    def plausible_max_mg_dl(self, analyte: str) -> float:
        """The plausibility bound of a serum immunoglobulin ('IgG', 'IgM', 'IgA')."""
        return {"IgG": self.igg_plausible_max_mg_dl, "IgM": self.igm_plausible_max_mg_dl,
                "IgA": self.iga_plausible_max_mg_dl}[analyte]

    def trough_target_range(self) -> str:
        """'600–800 mg/dL': the configured target up to the top of the guideline's target range."""
        low = self.trough_target_mg_dl
        if low < TROUGH_RANGE_TOP_MG_DL:
            return f"{low:g}–{TROUGH_RANGE_TOP_MG_DL:g} mg/dL"
        return f"{low:g} mg/dL"

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> "GuidelineConfig":
        """Refuse configurations whose ranges cross; such a ruleset would silently never fire."""
        pairs = [
            ("igg_borderline_from_mg_dl", "igg_deficient_mg_dl"),
            ("post_titer_min_days", "post_titer_max_days"),
            ("dose_min_g_per_kg", "dose_max_g_per_kg"),
            ("interval_min_weeks", "interval_max_weeks"),
            ("immunomodulatory_dose_min_g_per_kg", "immunomodulatory_dose_max_g_per_kg"),
            ("dose_max_g_per_kg", "immunomodulatory_dose_min_g_per_kg"),
            ("ppsv23_protective_fraction_young_child", "ppsv23_protective_fraction"),
            ("weight_plausible_min_kg", "adult_weight_plausible_min_kg"),
            ("adult_weight_plausible_min_kg", "weight_plausible_max_kg"),
            ("trough_overdue_months_active_infection", "trough_overdue_months"),
            ("igm_low_mg_dl", "igm_plausible_max_mg_dl"),
            ("igg_deficient_mg_dl", "igg_plausible_max_mg_dl"),
            ("titer_protective_ug_ml", "titer_plausible_max_ug_ml"),
        ]
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})")
        return self


DEFAULT_CONFIG = GuidelineConfig()

def threshold_fields() -> dict[str, dict]:
    """Name -> {default, description, unit, source} for every threshold, for explain and docs."""
    out: dict[str, dict] = {}
    for name, field in GuidelineConfig.model_fields.items():
        extra = field.json_schema_extra or {}
        out[name] = {
            "default": field.default,
            "description": field.description,
            "unit": extra.get("unit"),
            "source": extra.get("source"),
        }
    return out
