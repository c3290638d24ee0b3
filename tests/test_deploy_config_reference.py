"""The README's configuration reference is generated from the Settings models and kept current."""

from __future__ import annotations

from service.governance import config_reference
from service.ops.production import GUNICORN_ENV
from service.settings import LEAF_ENV
from tests.deploy_support import ROOT

README = ROOT / "README.md"


def test_readme_configuration_reference_is_current():
    assert config_reference.main(["--check", str(README)]) == 0, (
        "README.md's configuration reference is stale: run python -m service.governance.config_reference --write README.md")


def test_reference_lists_every_setting_with_its_variable_and_default():
    section = config_reference.render()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for dotted, env in LEAF_ENV.items():
        matching = [r for r in rows if r.startswith(f"| `{dotted}` | `{env}` | ")]
        assert len(matching) == 1, dotted
        cells = [c.strip() for c in matching[0].strip("|").split(" | ")]
        assert cells[2] and cells[3], f"{dotted}: default and description must not be empty"
    for var in GUNICORN_ENV:
        assert f"| `{var.name}` |" in section
    assert "`40`" in next(r for r in rows if "IVIG_CDS_IGM_LOW_MG_DL" in r)
    assert "production: `true`" in next(r for r in rows if "IVIG_CDS_SECURITY_REQUIRE_TOKEN" in r)


def test_check_fails_on_a_stale_or_unmarked_readme(tmp_path):
    text = README.read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(text.replace("| `guideline.igm_low_mg_dl` |", "| `guideline.igm_low` |"), encoding="utf-8")
    assert config_reference.main(["--check", str(stale)]) == 1
    assert config_reference.main(["--write", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("# no markers\n", encoding="utf-8")
    assert config_reference.main(["--check", str(unmarked)]) == 2


def test_write_touches_only_the_marked_section(tmp_path):
    doc = tmp_path / "README.md"
    before = "# Title\n\nintro\n\n" + config_reference.START + "\nSTALE-SECTION-TEXT\n" + config_reference.END + "\n\n## After\ntext\n"
    doc.write_text(before, encoding="utf-8")
    assert config_reference.main(["--write", str(doc)]) == 0
    after = doc.read_text(encoding="utf-8")
    assert after.startswith("# Title\n\nintro\n\n" + config_reference.START + "\n")
    assert after.endswith(config_reference.END + "\n\n## After\ntext\n")
    assert "STALE-SECTION-TEXT" not in after
