"""The README's configuration table and config/default.toml describe the same knobs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def toml_keys():
    keys, section = set(), None
    for line in (ROOT / "config" / "default.toml").read_text().splitlines():
        if m := re.match(r"^(?:# )?\[\[(\w+)\]\]", line):
            section = m.group(1)
        elif m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif section and (m := re.match(r"^#?\s?(\w+) = ", line)):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def readme_keys():
    return set(re.findall(r"^\| `(\w+\.\w+)` \|", (ROOT / "README.md").read_text(), re.M))


def test_readme_config_table_matches_default_toml():
    toml, readme = toml_keys(), readme_keys()
    assert toml, "no keys parsed from config/default.toml"
    assert toml - readme == set(), "knobs missing from the README table"
    assert readme - toml == set(), "README table rows that config/default.toml lacks"
