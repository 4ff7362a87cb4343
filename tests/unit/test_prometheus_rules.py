"""The Prometheus assets in deploy/prometheus: valid for promtool, tested, and complete.

`promtool check config`, `promtool check rules` and `promtool test rules` run against the shipped
files (promtool comes with Debian's `prometheus` package: `make system-deps`). The checks in Python
keep the promtool tests honest: every alert has a case where it fires and one where it stays
silent, every firing case pins its labels and annotations, every recording rule is evaluated by
a test, and every metric and label a rule reads is one tokenbook exports (README's Metrics table).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
CONFIG = PROM / "prometheus.yml"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
README = REPO / "README.md"

SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = ("summary", "description", "runbook")

#: Metrics the rules read that README's Metrics table does not list (yet). The budget metrics
#: are exported by the budget/ledger code; `tokenbook_registry_up` by metrics/instruments.py.
NOT_IN_README: dict[str, set[str]] = {}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.fail("promtool not found: run `make system-deps` (Debian package `prometheus`)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in load(path)["groups"] for rule in group["rules"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


# --- promtool ----------------------------------------------------------------------------------


def test_there_are_rule_and_test_files() -> None:
    assert [p.name for p in RULE_FILES] == ["tokenbook-alerts.yml", "tokenbook-recording.yml"]
    assert TEST_FILES


def test_promtool_check_config() -> None:
    done = run("check", "config", str(CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    # the config loads every rule file, and only those
    loaded = {(CONFIG.parent / p).resolve() for p in load(CONFIG)["rule_files"]}
    assert loaded == {p.resolve() for p in RULE_FILES}


def test_promtool_check_rules() -> None:
    done = run("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules() -> None:
    # One promtool per file, in parallel: the files are independent and some simulate a day.
    with ThreadPoolExecutor(max_workers=len(TEST_FILES)) as pool:
        results = list(pool.map(lambda p: (p, run("test", "rules", str(p))), TEST_FILES))
    failed = [f"{p.name}:\n{d.stdout}{d.stderr}" for p, d in results if d.returncode != 0]
    assert not failed, "\n".join(failed)
    for path, done in results:
        assert "SUCCESS" in done.stdout, (path, done.stdout)


# --- the alerts themselves ---------------------------------------------------------------------


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: str(r["alert"]))
def test_alert_has_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Tokenbook")
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for name in ANNOTATIONS:
        assert str(annotations.get(name, "")).strip(), f"{rule['alert']}: no {name}"
    # a runbook names something to run, in backticks
    assert re.search(r"`[^`]+`", annotations["runbook"]), (
        f"{rule['alert']}: runbook names no command"
    )


# --- the promtool tests cover every rule -------------------------------------------------------


@dataclass
class Coverage:
    fires: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)


def alert_coverage() -> dict[str, Coverage]:
    cover: dict[str, Coverage] = defaultdict(Coverage)
    for path in TEST_FILES:
        for test in load(path).get("tests", []):
            for case in test.get("alert_rule_test", []) or []:
                where = f"{path.name}: {test.get('name', '?')} @ {case['eval_time']}"
                if case.get("exp_alerts"):
                    cover[case["alertname"]].fires.append(where)
                    for alert in case["exp_alerts"]:
                        assert alert.get("exp_labels", {}).get("severity"), (where, "no severity")
                        got = set(alert.get("exp_annotations", {}))
                        assert got == set(ANNOTATIONS), (where, "annotations not all pinned", got)
                else:
                    cover[case["alertname"]].silent.append(where)
    return cover


def test_every_alert_is_tested_firing_and_silent() -> None:
    cover = alert_coverage()
    names = {rule["alert"] for rule in alert_rules()}
    assert not set(cover) - names, f"tests for alerts that do not exist: {set(cover) - names}"
    missing = {
        name: [
            d
            for d, cases in (("fires", cover[name].fires), ("silent", cover[name].silent))
            if not cases
        ]
        for name in names
    }
    missing = {name: gaps for name, gaps in missing.items() if gaps}
    assert not missing, f"alerts without a test case in that direction: {missing}"


def test_every_recording_rule_is_evaluated_by_a_test() -> None:
    tested: set[str] = set()
    for path in TEST_FILES:
        for test in load(path).get("tests", []):
            for case in test.get("promql_expr_test", []) or []:
                m = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", case["expr"])
                assert m, case["expr"]
                tested.add(m.group(1))
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert recorded - tested == set(), (
        f"recording rules no promql_expr_test evaluates: {recorded - tested}"
    )


# --- consistency with the metrics tokenbook exports --------------------------------------------


def readme_metrics() -> dict[str, set[str]]:
    """Metric name -> label names, from README's Metrics table."""
    text = README.read_text()
    table = text.split("## Metrics", 1)[1].split("\n\n", 2)[1]
    metrics: dict[str, set[str]] = {}
    previous: set[str] = set()
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([a-z_]+)`", cells[0])
        # label names: backticked words before any " — " note and outside parentheses (values)
        outside_parens = re.sub(r"\([^)]*\)", "", cells[1].split(" — ", 1)[0])
        labels = {w for group in re.findall(r"`([^`]+)`", outside_parens) for w in group.split()}
        if outside_parens.strip() == "same":
            labels = previous
        for name in names:
            metrics[name] = labels
        previous = labels
    return metrics


def exported() -> dict[str, set[str]]:
    out = dict(readme_metrics())
    for name, labels in list(out.items()):
        if name.endswith("_seconds"):  # histograms: their series
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    out.update(NOT_IN_README)
    return out


SELECTOR = re.compile(r"\b(tokenbook_[a-z_]+)\b(\{[^}]*\})?")


def test_readme_table_is_parsed() -> None:
    metrics = readme_metrics()
    assert metrics["tokenbook_cost_usd_total"] == metrics["tokenbook_tokens_total"]
    assert {"token_type", "key_id", "source"} <= metrics["tokenbook_tokens_total"]
    assert "outcome" in metrics["tokenbook_requests_total"]
    assert metrics["tokenbook_extproc_errors_total"] == {"role", "kind"}
    assert metrics["tokenbook_label_overflow_total"] == {"label"}


@pytest.mark.parametrize("rule", rules(), ids=lambda r: str(r.get("alert") or r.get("record")))
def test_rule_reads_only_exported_metrics_and_labels(rule: dict[str, Any]) -> None:
    known = exported()
    for metric, matchers in SELECTOR.findall(rule["expr"]):
        assert metric in known, f"{metric} is not a metric tokenbook exports"
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in known[metric] | TARGET_LABELS, f"{metric} has no label {label}"
