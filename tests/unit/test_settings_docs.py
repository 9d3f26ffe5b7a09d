"""docs/settings.md against the code: every setting read anywhere in src is documented, every
documented setting is read, and each documented default is the one Settings has (config.py
defines the settings once; this keeps the docs and load_settings from drifting away from it)."""

from __future__ import annotations

import re
from pathlib import Path

from assistd.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `((?:ASSISTD|OPENAI)_[A-Z_]+)` \| ([^|]*) \|", re.MULTILINE)
PLAIN_DEFAULT = re.compile(r"`([^`]+)`(?: \(.*\))?")


def documented() -> dict[str, str]:
    """Variable → the default column of docs/settings.md's table."""
    return {name: default.strip() for name, default in ROW.findall((ROOT / "docs/settings.md").read_text())}


def read_in_source() -> set[str]:
    return {name for path in (ROOT / "src/assistd").rglob("*.py")
            for name in re.findall(r'"(ASSISTD_[A-Z_]+)"', path.read_text())}


def test_every_setting_read_anywhere_is_documented_and_every_documented_one_is_read() -> None:
    read, docs = read_in_source(), set(documented()) - {"OPENAI_API_KEY"}
    assert read, "no settings found in src"
    assert sorted(read - docs) == [], "read in src/assistd but not in docs/settings.md"
    assert sorted(docs - read) == [], "in docs/settings.md but read nowhere"


def test_load_settings_without_variables_gives_the_settings_defaults() -> None:
    assert load_settings({}) == Settings()


def test_each_documented_default_is_the_default_settings_has() -> None:
    defaults, checked = Settings(), []
    for name, column in documented().items():
        shown = PLAIN_DEFAULT.fullmatch(column)
        field = name.removeprefix("ASSISTD_").lower()
        if shown is None or not hasattr(defaults, field) or isinstance(getattr(defaults, field), bool):
            continue  # "unset", "SQLite in the data dir", `auto` switches: words, not values
        value, text = getattr(defaults, field), shown.group(1)
        if text.startswith(("$", "ASSISTD_")):
            continue  # the default is another variable's value
        if isinstance(value, int | float):
            assert float(text) == value, (name, text, value)
        elif isinstance(value, Path):
            assert Path(text) == value, (name, text, value)
        else:
            assert text.lower() == str(value).lower(), (name, text, value)
        checked.append(name)
    assert len(checked) >= 30, checked
