from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import PACKAGE_RULES_DIR
from rules.loader import (
    PACKAGE_IDENTITY_FILE,
    IdentifierType,
    IdentityRules,
    RuleLoadError,
    RuleSet,
    default_identity,
    load_rules,
)

TRIGGERS = ("version: 1\ntriggers:\n  - id: r\n    version: 1\n    when: a\n    wait: 1h\n"
            "    action: {channel: sms, template: t, to: phone}\n")


def identity_file(types: str, extra: str = "") -> str:
    return "version: 1\nidentity:\n" + extra + "  types:\n" + types


def errors_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "identity.yaml").write_text(text)
    with pytest.raises(RuleLoadError) as exc:
        load_rules(tmp_path)
    return [str(e) for e in exc.value.errors]


def test_the_shipped_defaults_load_as_docs_identity_md_states():
    ident = load_rules(PACKAGE_RULES_DIR).identity
    assert list(ident.types) == ["user_id", "crm_id", "phone", "email", "wechat_unionid", "miniapp_openid",
                                 "wechat_openid", "device_id", "anonymous_id"]
    assert [ident.priority(t) for t in ident.types] == [100, 90, 80, 70, 60, 50, 40, 20, 10]
    t = ident.types
    assert t["user_id"].unique and t["user_id"].limit == 1 and t["user_id"].read_from == ("user_id",)
    assert t["crm_id"].unique and t["crm_id"].limit == 1
    assert (t["phone"].limit, t["email"].limit, t["wechat_unionid"].limit) == (3, 3, 2)
    assert (t["miniapp_openid"].limit, t["wechat_openid"].limit) == (5, 10)
    assert (t["device_id"].limit, t["device_id"].window_ms) == (5, 7 * 86_400_000)
    assert (t["anonymous_id"].limit, t["anonymous_id"].window_ms) == (100, 30 * 86_400_000)
    assert t["anonymous_id"].read_from == ("anonymous_id", "previous_id")
    assert t["device_id"].read_from == ("identities.device_id", "context.device.id")
    assert t["phone"].read_from == ("identities.phone", "traits.phone", "context.traits.phone")
    assert {n: x.normalize for n, x in t.items() if x.normalize != "trim"} == {
        "phone": "phone", "email": "email", "miniapp_openid": "openid", "wechat_openid": "openid"}
    assert {n for n, x in t.items() if x.contact} == {
        "phone", "email", "wechat_openid", "miniapp_openid", "wechat_unionid", "device_id", "crm_id"}
    assert {k: ident.external_ids[k] for k in ("email", "phone", "crm_id", "user_id", "device_id",
                                               "wechat_unionid")} == {
        "email": "email", "phone": "phone", "crm_id": "crm_id", "user_id": "user_id", "device_id": "device_id",
        "wechat_unionid": "wechat_unionid"}
    assert (ident.max_identifiers, ident.max_merges, ident.version) == (200, 100, 1)
    assert len(ident.digest) == 16


def test_a_directory_without_identity_rules_gets_the_package_defaults(tmp_path: Path):
    (tmp_path / "triggers.yaml").write_text(TRIGGERS)
    ident = load_rules(tmp_path).identity
    assert ident.types == default_identity().types and ident.digest == default_identity().digest
    assert RuleSet().identity is default_identity()


def test_the_identity_digest_follows_the_rules_not_the_comments(tmp_path: Path):
    text = PACKAGE_IDENTITY_FILE.read_text()
    (tmp_path / "identity.yaml").write_text(text + "# a comment\n")
    assert load_rules(tmp_path).identity.digest == default_identity().digest
    (tmp_path / "identity.yaml").write_text(text.replace("max_merges: 100", "max_merges: 50"))
    changed = load_rules(tmp_path).identity
    assert changed.max_merges == 50 and changed.digest != default_identity().digest


def test_a_deployment_declares_its_own_type(tmp_path: Path):
    (tmp_path / "identity.yaml").write_text(identity_file(
        "    member_no:\n      priority: 95\n      unique: true\n      read_from: [identities.member_no]\n"
        "      contact: true\n"
        "    user_id:\n      priority: 100\n      unique: true\n      read_from: [user_id]\n"
        "    visitor:\n      priority: 5\n      limit: 3\n      window: 3600\n      read_from: [properties.visitor]\n",
        extra="  max_identifiers: 50\n")
        + "  external_ids:\n    loyalty: member_no\n")
    ident = load_rules(tmp_path).identity
    assert list(ident.types) == ["user_id", "member_no", "visitor"]
    assert ident.types["visitor"].window_ms == 3_600_000  # a number in a rule file is seconds
    member = ident.types["member_no"]
    assert member == IdentifierType(name="member_no", priority=95, unique=True, limit=1,
                                    read_from=("identities.member_no",), contact=True)
    assert ident.external_ids == {"loyalty": "member_no"} and ident.max_identifiers == 50
    assert ident.priority("member_no") == 95 and ident.priority("phone") == 0


def test_types_are_ordered_strongest_first_ties_by_name():
    def t(name: str, priority: int) -> IdentifierType:
        return IdentifierType(name=name, priority=priority, read_from=(f"identities.{name}",))
    rules = IdentityRules(version=1, types={"b": t("b", 5), "weak": t("weak", 1), "a": t("a", 5), "top": t("top", 9)})
    assert list(rules.types) == ["top", "a", "b", "weak"]
    assert IdentifierType(name="d", priority=1, limit=5, window_ms=60_000, read_from=("d",)).window_ms == 60_000


@pytest.mark.parametrize("spec, line, field, message", [
    ("    phone:\n      priority: 80\n      read_from: [traits.phone]\n      blocked_patterns: ['(\\d']\n",
     7, "identity.types.phone.blocked_patterns.0", "not a valid regular expression"),
    ("    phone:\n      priority: 80\n      normalize: digits\n      read_from: [traits.phone]\n",
     6, "identity.types.phone.normalize", "'trim', 'lower', 'phone', 'email' or 'openid'"),
    ("    phone:\n      priority: 80\n      limit: -1\n      read_from: [traits.phone]\n",
     6, "identity.types.phone.limit", "greater than or equal to 1"),
    ("    user_id:\n      priority: 100\n      unique: true\n      limit: 2\n      read_from: [user_id]\n",
     7, "identity.types.user_id.limit", "contradicts unique"),
    ("    device_id:\n      priority: 20\n      window: 7d\n      read_from: [context.device.id]\n",
     6, "identity.types.device_id.window", "set limit too"),
    ("    device_id:\n      priority: 20\n      limit: 5\n      window: soon\n      read_from: [context.device.id]\n",
     7, "identity.types.device_id.window", "not a duration"),
    ("    phone:\n      priority: 80\n      read_from: []\n",
     6, "identity.types.phone.read_from", "at least 1 item"),
    ("    phone:\n      priority: 0\n      read_from: [traits.phone]\n",
     5, "identity.types.phone.priority", "greater than or equal to 1"),
    ("    phone:\n      priority: 80\n      read_from: [traits.phone]\n      blocked: [13800000000]\n",
     7, "identity.types.phone.blocked.0", "write the value in quotes"),
    ("    phone:\n      priority: 80\n      read_from: [traits.phone]\n    phone:\n      priority: 70\n"
     "      read_from: [identities.phone]\n",
     7, "identity.types.phone", "written twice (first at line 4)"),
    ("    phone:\n      priority: 80\n      read_from: [traits.phone]\n    mobile:\n      priority: 70\n"
     "      read_from: [identities.phone, traits.phone]\n",
     9, "identity.types.mobile.read_from.1", "read by 'phone' already"),
    ("    any:\n      priority: 80\n      read_from: [traits.phone]\n",
     4, "identity.types.any.name", "reserved"),
])
def test_each_error_names_file_line_and_field(tmp_path: Path, spec: str, line: int, field: str, message: str):
    msgs = errors_of(tmp_path, identity_file(spec))
    prefix = f"{tmp_path / 'identity.yaml'}:{line}: {field}: "
    assert any(m.startswith(prefix) and message in m for m in msgs), msgs


def test_external_ids_must_name_a_declared_type(tmp_path: Path):
    msgs = errors_of(tmp_path, identity_file("    phone:\n      priority: 80\n      read_from: [traits.phone]\n")
                     + "  external_ids:\n    phone: phone\n    crm: crm_id\n")
    assert msgs == [f"{tmp_path / 'identity.yaml'}:9: identity.external_ids.crm: "
                    "'crm_id' is not a declared identifier type (phone)"]


def test_identity_rules_are_defined_once(tmp_path: Path):
    text = identity_file("    phone:\n      priority: 80\n      read_from: [traits.phone]\n")
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(RuleLoadError) as exc:
        load_rules(tmp_path)
    assert [str(e) for e in exc.value.errors] == [
        f"{tmp_path / 'b.yaml'}:2: identity: identity rules are defined once (first in {tmp_path / 'a.yaml'})"]


def test_rules_check_prints_identity_errors_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from cdp_cli.main import main

    (tmp_path / "identity.yaml").write_text(identity_file(
        "    phone:\n      priority: 80\n      limit: 0\n      read_from: [traits.phone]\n"))
    assert main(["rules", "check", str(tmp_path)]) == 1
    assert f"{tmp_path / 'identity.yaml'}:6: identity.types.phone.limit:" in capsys.readouterr().err


def test_blocked_values_and_patterns(tmp_path: Path):
    (tmp_path / "events.yaml").write_text(
        "version: 1\nblocked_identifiers:\n  phone: ['13800000000']\n  email: ['QA@Shop.CN']\n  any: [demo]\n")
    (tmp_path / "identity.yaml").write_text(identity_file(
        "    phone:\n      priority: 80\n      normalize: phone\n      read_from: [traits.phone]\n"
        "      blocked: ['13000000000']\n      blocked_patterns: ['(\\d)\\1{10}']\n"
        "    email:\n      priority: 70\n      normalize: email\n      read_from: [traits.email]\n"
        "    wechat_openid:\n      priority: 40\n      normalize: openid\n      read_from: [identities.wechat_openid]\n"
        "      blocked: [oShared]\n",
        extra="  blocked: [shared]\n  blocked_patterns: ['test.*']\n"))
    ident = load_rules(tmp_path).identity
    assert ident.types["phone"].blocked == {"13000000000", "13800000000", "demo", "shared"}
    assert ident.types["email"].blocked == {"qa@shop.cn", "demo", "shared"}
    assert ident.is_blocked("phone", "13800000000") and ident.is_blocked("phone", "13000000000")
    assert ident.is_blocked("phone", "11111111111") and not ident.is_blocked("phone", "13912345678")
    assert ident.is_blocked("email", "qa@shop.cn") and ident.is_blocked("email", "test1@shop.cn")
    assert not ident.is_blocked("email", "a.test@shop.cn")  # a pattern matches the whole value, not a part
    assert ident.is_blocked("wechat_openid", "wx123:oShared") and not ident.is_blocked("wechat_openid", "wx1:oMine")
    # A type the rules do not declare is checked against the values and patterns of every type.
    assert ident.is_blocked("qq_openid", "demo") and ident.is_blocked("qq_openid", "tester")
    assert not ident.is_blocked("qq_openid", "13800000000")


def test_the_default_phone_patterns_block_zeros_and_repeated_digits():
    ident = default_identity()
    assert ident.is_blocked("phone", "00000000000") and ident.is_blocked("phone", "0")
    assert ident.is_blocked("email", "someone@example.com") and not ident.is_blocked("email", "someone@qq.com")
    assert ident.is_blocked("device_id", "00000000-0000-0000-0000-000000000000")


@given(st.sampled_from("0123456789"))
def test_any_one_digit_repeated_eleven_times_is_blocked(digit: str):
    assert default_identity().is_blocked("phone", digit * 11)


@given(st.from_regex(r"1[3-9]\d{9}", fullmatch=True))
def test_a_mainland_mobile_that_is_not_listed_is_not_blocked(phone: str):
    assert not default_identity().is_blocked("phone", phone)
