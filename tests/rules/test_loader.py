import hashlib
from pathlib import Path

import pytest

from config.settings import PACKAGE_RULES_DIR
from rules.loader import RuleLoadError, load_rules, parse_duration_ms


def test_shipped_rules_load():
    rs = load_rules(PACKAGE_RULES_DIR)
    assert rs.aliases["Product Added"] == "add_to_cart"
    (cart,) = [t for t in rs.triggers if t.id == "cart_not_paid_sms"]
    assert cart.wait_ms == 3_600_000 and cart.action.channel.value == "sms"
    assert len(rs.digest) == 16


@pytest.mark.parametrize("text, ms", [("90s", 90_000), ("10m", 600_000), ("1h", 3_600_000), ("7d", 604_800_000),
                                      (30, 30_000), ("250ms", 250)])
def test_durations(text, ms):
    assert parse_duration_ms(text) == ms


def test_errors_name_file_line_and_field(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        "version: 1\n"
        "triggers:\n"
        "  - id: cart_sms\n"
        "    version: 1\n"
        "    when: add_to_cart\n"
        "    wait: soon\n"
        "    action:\n"
        "      channel: pigeon\n"
        "      template: t\n"
        "      to: phone\n"
    )
    with pytest.raises(RuleLoadError) as exc:
        load_rules(tmp_path)
    msgs = [str(e) for e in exc.value.errors]
    assert any(m.startswith(f"{f}:6: triggers.0.wait:") for m in msgs), msgs
    assert any(m.startswith(f"{f}:8: triggers.0.action.channel:") for m in msgs), msgs


def test_duplicate_ids_and_bad_yaml_are_reported(tmp_path: Path):
    rule = ("  - id: r\n    version: 1\n    when: a\n    wait: 1h\n"
            "    action: {channel: sms, template: t, to: phone}\n")
    (tmp_path / "a.yaml").write_text("version: 1\ntriggers:\n" + rule)
    (tmp_path / "b.yaml").write_text("version: 1\ntriggers:\n" + rule)
    (tmp_path / "c.yaml").write_text("version: 1\ntriggers: [\n")
    with pytest.raises(RuleLoadError) as exc:
        load_rules(tmp_path)
    text = str(exc.value)
    assert "duplicate rule id 'r'" in text and "c.yaml" in text and "not valid YAML" in text


def test_unknown_keys_are_errors(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("version: 1\ntrigers: []\n")
    with pytest.raises(RuleLoadError) as exc:
        load_rules(tmp_path)
    assert "a.yaml:2: trigers:" in str(exc.value)


def test_triggers_by_event_names_each_enabled_rule_its_events_arm_or_cancel(tmp_path: Path):
    def rule(rid: str, when: str, unless: str | None, enabled: bool = True) -> str:
        return (f"  - id: {rid}\n    version: 1\n    when: {when}\n" + (f"    unless: {unless}\n" if unless else "")
                + f"    enabled: {str(enabled).lower()}\n    wait: 1h\n"
                "    action:\n      channel: sms\n      template: t\n      to: phone\n")
    (tmp_path / "t.yaml").write_text("version: 1\ntriggers:\n" + rule("a", "cart", "paid") + rule("b", "view", "cart")
                                     + rule("c", "cart", None, enabled=False) + rule("d", "loop", "loop"))
    by_event = load_rules(tmp_path).triggers_by_event
    assert {k: [r.id for r in v] for k, v in by_event.items()} == {
        "cart": ["a", "b"], "paid": ["a"], "view": ["b"], "loop": ["d"]}


def test_the_digest_is_of_the_bytes_the_rules_were_read_from(tmp_path: Path):
    rule = "version: 1\naliases: {Product Added: add_to_cart}\n"
    (tmp_path / "a.yaml").write_text(rule)
    first = load_rules(tmp_path)
    assert first.digest == hashlib.sha256(b"a.yaml\0" + rule.encode()).hexdigest()[:16]
    (tmp_path / "a.yaml").write_text(rule + "# a comment changes the bytes, not the rules\n")
    again = load_rules(tmp_path)
    assert again.aliases == first.aliases and again.digest != first.digest


def test_a_file_that_is_not_utf8_is_reported_not_raised(tmp_path: Path):
    (tmp_path / "a.yaml").write_bytes(b"version: 1\naliases: {caf\xe9: cafe}\n")
    with pytest.raises(RuleLoadError) as exc:
        load_rules(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / 'a.yaml'}: $: not valid YAML")
