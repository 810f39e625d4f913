"""The README stays true: every flag, variable and metric the code has is documented."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from consumer.config import OPTIONS, env_name
from consumer.metrics import PREFIX, Metrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_flag_and_its_variable_is_in_the_readme() -> None:
    missing = [
        o.flag
        for o in OPTIONS
        if f"`--{o.flag}`" not in README or f"`{env_name(o.flag)}`" not in README
    ]
    assert not missing


def test_every_exported_metric_is_in_the_readme() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    names = {m.name.removeprefix(PREFIX) for m in registry.collect()}
    documented = set(re.findall(r"^\| `([a-z_]+)(?:\{[^}]*\})?` \|", README, re.MULTILINE))
    counters = {m.name.removeprefix(PREFIX) for m in registry.collect() if m.type == "counter"}
    expected = {n + "_total" if n in counters else n for n in names}
    assert expected - documented == set()
