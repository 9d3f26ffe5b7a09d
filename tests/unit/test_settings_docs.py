"""docs/settings.md against the one definition of the settings, `Settings` in config.py: every
field's variable is documented, every documented variable is a field's, each documented default
is the field's, and no other module reads or names a variable Settings doesn't define."""

from __future__ import annotations

import re
from pathlib import Path

from assistd.config import Settings, load_settings, variables

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `((?:ASSISTD|OPENAI)_[A-Z_]+)` \| ([^|]*) \|", re.MULTILINE)
PLAIN_DEFAULT = re.compile(r"`([^`]+)`(?: \(.*\))?")
ENVIRON_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["'](ASSISTD_[A-Z_]+)""")


def documented() -> dict[str, str]:
    """Variable → the default column of docs/settings.md's table."""
    return {name: default.strip() for name, default in ROW.findall((ROOT / "docs/settings.md").read_text())}


def field_of() -> dict[str, str]:
    """Variable → the Settings field read from it."""
    return {variable: field for field in Settings.model_fields for variable in variables(field)}


def sources() -> dict[Path, str]:
    return {path: path.read_text() for path in (ROOT / "src/assistd").rglob("*.py")}


def test_every_field_is_documented_and_every_documented_variable_is_a_field() -> None:
    defined, docs = set(field_of()), set(documented())
    assert len(defined) >= len(Settings.model_fields) > 40
    assert sorted(defined - docs) == [], "a Settings field missing from docs/settings.md"
    assert sorted(docs - defined) == [], "in docs/settings.md but no Settings field reads it"


def test_every_variable_named_in_src_is_a_field() -> None:
    named = {name for text in sources().values() for name in re.findall(r"\bASSISTD_[A-Z_]*[A-Z]", text)}
    assert named, "no settings named in src"
    assert sorted(named - set(field_of())) == [], "named in src/assistd but no Settings field reads it"


def test_no_module_reads_a_setting_past_settings() -> None:
    readers = {path.relative_to(ROOT).as_posix(): ENVIRON_READ.findall(text) for path, text in sources().items()}
    assert {path: names for path, names in readers.items() if names} == {}, "read past Settings"


def test_load_settings_without_variables_gives_the_settings_defaults() -> None:
    assert load_settings({}) == Settings()


def test_each_documented_default_is_the_field_default() -> None:
    fields, checked = field_of(), []
    for name, column in documented().items():
        shown = PLAIN_DEFAULT.fullmatch(column)
        default = Settings.model_fields[fields[name]].default
        if shown is None or shown.group(1).startswith(("$", "ASSISTD_")) or isinstance(default, bool):
            continue  # "unset", "SQLite in the data dir", another variable's value, `auto` switches
        text = shown.group(1)
        if isinstance(default, int | float):
            assert float(text) == default, (name, text, default)
        elif isinstance(default, Path):
            assert Path(text) == default, (name, text, default)
        else:
            assert text.lower() == str(default).lower(), (name, text, default)
        checked.append(name)
    assert len(checked) >= 30, checked
