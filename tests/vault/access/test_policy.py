"""The access policy: the shipped default, deny by default, refusing bad files, masks and views."""

from __future__ import annotations

from pathlib import Path

import pytest

from vault.access.policy import OPERATIONS, PURPOSES, Decision, Policy, Rule, apply_view, load_policy, mask
from vault.errors import ConfigurationError

CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2030, "holder": "Ann Example"}
ADDRESS = {"name": "Ann Example", "line1": "1 Main Street", "line2": "Flat 2", "city": "Berlin",
           "region": "BE", "postal_code": "10115", "country": "DE", "phone": "+4930123456", "use": "shipping"}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped default -------------------------------------------------------------------

def test_shipped_default_loads(policy: Policy) -> None:
    assert policy.source == "default"
    assert policy.keep_bin is False


@pytest.mark.parametrize("role", ["checkout", "payment_gateway", "shipping", "support", "admin", "auditor"])
def test_shipped_default_has_role(policy: Policy, role: str) -> None:
    assert policy.has_role(role)
    assert role in policy.roles


def test_unknown_role_is_denied_everything(policy: Policy) -> None:
    assert not policy.has_role("nobody")
    assert policy.rules_of("nobody") == ()
    for operation in OPERATIONS:
        assert policy.may_use("nobody", operation) is False
        for purpose in (*PURPOSES, None):
            assert policy.decide("nobody", operation, "card", purpose=purpose) is None
            assert policy.decide("nobody", operation, purpose=purpose) is None


def test_unknown_operation_is_denied_to_every_role(policy: Policy) -> None:
    for role in policy.roles:
        assert policy.may_use(role, "detokenise") is False
        assert policy.decide(role, "detokenise", "card", purpose="payment") is None


@pytest.mark.parametrize("kind", ["card", "cvv"])
def test_payment_gateway_detokenizes_card_and_cvv_for_payment_only(policy: Policy, kind: str) -> None:
    decision = policy.decide("payment_gateway", "detokenize", kind, purpose="payment")
    assert decision is not None
    assert decision.view == "plain"
    for purpose in ("fulfillment", "support", "marketing", "legal", None):
        assert policy.decide("payment_gateway", "detokenize", kind, purpose=purpose) is None


@pytest.mark.parametrize("kind", ["address", "email", "phone", "name", "text"])
def test_payment_gateway_cannot_detokenize_other_kinds(policy: Policy, kind: str) -> None:
    assert policy.decide("payment_gateway", "detokenize", kind, purpose="payment") is None


def test_payment_gateway_cannot_tokenize(policy: Policy) -> None:
    assert policy.may_use("payment_gateway", "tokenize") is False
    assert policy.decide("payment_gateway", "tokenize", "card") is None


def test_shipping_detokenizes_shipping_addresses_for_fulfillment_with_a_field_list(policy: Policy) -> None:
    decision = policy.decide("shipping", "detokenize", "address", purpose="fulfillment", use="shipping")
    assert decision is not None
    assert decision.view == "plain"
    assert set(decision.rule.fields) == {"name", "line1", "line2", "city", "region", "postal_code", "country",
                                         "phone"}


def test_shipping_cannot_detokenize_billing_addresses(policy: Policy) -> None:
    assert policy.decide("shipping", "detokenize", "address", purpose="fulfillment", use="billing") is None
    assert policy.decide("shipping", "detokenize", "address", purpose="fulfillment", use=None) is None


def test_shipping_needs_purpose_fulfillment(policy: Policy) -> None:
    for purpose in ("payment", "support", "marketing", "legal", None):
        assert policy.decide("shipping", "detokenize", "address", purpose=purpose, use="shipping") is None


@pytest.mark.parametrize("kind", ["card", "cvv", "email", "phone", "name", "text"])
def test_shipping_cannot_detokenize_anything_but_addresses(policy: Policy, kind: str) -> None:
    assert policy.decide("shipping", "detokenize", kind, purpose="fulfillment", use="shipping") is None


@pytest.mark.parametrize("kind", ["card", "address", "email", "phone"])
def test_support_detokenize_is_masked(policy: Policy, kind: str) -> None:
    decision = policy.decide("support", "detokenize", kind, purpose="support", use="billing")
    assert decision is not None
    assert decision.view == "masked"


def test_support_cannot_detokenize_cvv_or_without_purpose_support(policy: Policy) -> None:
    assert policy.decide("support", "detokenize", "cvv", purpose="support") is None
    assert policy.decide("support", "detokenize", "card", purpose="payment") is None


def test_checkout_cannot_detokenize(policy: Policy) -> None:
    assert policy.may_use("checkout", "detokenize") is False
    for kind in ("card", "cvv", "address", "email", "phone", "name", "text"):
        for purpose in (*PURPOSES, None):
            assert policy.decide("checkout", "detokenize", kind, purpose=purpose, use="shipping") is None


def test_checkout_may_tokenize_every_kind(policy: Policy) -> None:
    assert policy.may_use("checkout", "tokenize")
    for kind in ("card", "cvv", "address", "email", "phone", "name", "text"):
        assert policy.decide("checkout", "tokenize", kind) is not None


@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_admin_and_auditor_never_see_plaintext(policy: Policy, role: str) -> None:
    for operation in ("detokenize", "export", "disclose"):
        assert policy.may_use(role, operation) is False


# -- refusing bad policy files ---------------------------------------------------------------------

REFUSED = {
    "unknown kind": ('[roles.x]\nrules = [{ operations = ["tokenize"], kinds = ["iban"] }]\n',
                     ["roles.x.rules.0.kinds.0"]),
    "unknown operation": ('[roles.x]\nrules = [{ operations = ["detokenise"], kinds = ["card"], '
                          'purposes = ["payment"] }]\n', ["roles.x.rules.0.operations.0"]),
    "unknown purpose": ('[roles.x]\nrules = [{ operations = ["detokenize"], kinds = ["card"], '
                        'purposes = ["curiosity"] }]\n', ["roles.x.rules.0.purposes.0"]),
    "unknown field": ('[roles.x]\nrules = [{ operations = ["detokenize"], kinds = ["address"], '
                      'purposes = ["fulfillment"], fields = ["zip"] }]\n', ["roles.x.rules.0.fields.0"]),
    "unknown view": ('[roles.x]\nrules = [{ operations = ["detokenize"], kinds = ["card"], '
                     'purposes = ["payment"], view = "full" }]\n', ["roles.x.rules.0.view"]),
    "unknown top-level key": ('roles_extra = true\n[roles.x]\nrules = []\n', ["roles_extra", "Extra inputs"]),
    "unknown rule key": ('[roles.x]\nrules = [{ operations = ["tokenize"], kinds = ["card"], kind = "card" }]\n',
                         ["roles.x.rules.0.kind", "Extra inputs"]),
    "unknown settings key": ('[settings]\nkeep_pan = true\n[roles.x]\nrules = []\n', ["settings.keep_pan"]),
    "detokenize without purposes": ('[roles.x]\nrules = [{ operations = ["detokenize"], kinds = ["card"] }]\n',
                                    ["detokenize rule must list the purposes"]),
    "data operation without kinds": ('[roles.x]\nrules = [{ operations = ["tokenize"] }]\n',
                                     ["needs the kinds"]),
    "uses on a card rule": ('[roles.x]\nrules = [{ operations = ["detokenize"], kinds = ["card"], '
                            'purposes = ["payment"], uses = ["shipping"] }]\n', ["`uses` applies to address"]),
    "admin granted detokenize": ('[roles.admin]\nrules = [{ operations = ["detokenize"], kinds = ["card"], '
                                 'purposes = ["legal"] }]\n', ["role admin may never see plaintext"]),
    "auditor granted masked detokenize": ('[roles.auditor]\nrules = [{ operations = ["detokenize"], '
                                          'kinds = ["email"], purposes = ["support"], view = "masked" }]\n',
                                          ["role auditor may never see plaintext"]),
    "auditor granted export": ('[roles.auditor]\nrules = [{ operations = ["export"], kinds = ["email"] }]\n',
                               ["role auditor may never see plaintext"]),
    "no roles": ('[settings]\nkeep_bin = true\n', ["roles", "Field required"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_load_policy_refuses_with_a_clear_message(tmp_path: Path, case: str) -> None:
    text, expected = REFUSED[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(f"policy {path} refused: ")
    for part in expected:
        assert part in message


@pytest.mark.parametrize("text", ['[roles.x\nrules = ', 'roles = "a" = "b"', "\x00"])
def test_load_policy_refuses_malformed_toml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^policy file unreadable: "):
        load_policy(write(tmp_path, text))


def test_load_policy_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^policy file unreadable: "):
        load_policy(tmp_path / "absent.toml")


def test_load_policy_accepts_a_minimal_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[settings]\nkeep_bin = true\n[roles.reader]\nrules = [{ operations = ["detokenize"], '
                           'kinds = ["email"], purposes = ["support"], view = "redacted" }]\n')
    loaded = load_policy(path)
    assert loaded.source == str(path)
    assert loaded.keep_bin is True
    assert loaded.roles == ("reader",)
    decision = loaded.decide("reader", "detokenize", "email", purpose="support")
    assert decision is not None and decision.view == "redacted"


# -- masks and views -------------------------------------------------------------------------------

def test_card_mask_shows_only_the_last_four() -> None:
    masked = mask("card", CARD, keep_bin=False)
    assert masked == {"pan": "************1111", "exp_month": 12, "exp_year": 2030}


def test_card_mask_shows_the_bin_with_keep_bin() -> None:
    assert mask("card", CARD, keep_bin=True)["pan"] == "411111******1111"


def test_card_mask_of_a_short_pan_never_shows_the_bin() -> None:
    assert mask("card", {**CARD, "pan": "378282246310005"}, keep_bin=True)["pan"] == "***********0005"


def test_card_mask_drops_the_holder() -> None:
    assert "holder" not in mask("card", CARD, keep_bin=True)


def test_email_mask_keeps_first_letter_and_domain() -> None:
    assert mask("email", "john.doe@example.com", keep_bin=False) == "j***@example.com"


def test_phone_mask_keeps_last_two_digits() -> None:
    assert mask("phone", "+14155552671", keep_bin=False) == "**********71"


def test_address_mask_is_city_country_and_use_only() -> None:
    assert mask("address", ADDRESS, keep_bin=False) == {"city": "Berlin", "country": "DE", "use": "shipping"}


def test_name_mask_keeps_the_first_letter() -> None:
    assert mask("name", "Ann Example", keep_bin=False) == "A***"


@pytest.mark.parametrize("kind", ["cvv", "text"])
def test_other_kinds_mask_to_stars(kind: str) -> None:
    assert mask(kind, "123", keep_bin=True) == "***"


def test_apply_view_with_fields_returns_only_those_keys(policy: Policy) -> None:
    decision = policy.decide("shipping", "detokenize", "address", purpose="fulfillment", use="shipping")
    assert decision is not None
    shown = apply_view("address", ADDRESS, decision, keep_bin=False)
    assert set(shown) == set(decision.rule.fields)
    assert "use" not in shown
    assert all(shown[key] == ADDRESS[key] for key in shown)


def test_apply_view_masked_uses_the_mask(policy: Policy) -> None:
    decision = policy.decide("support", "detokenize", "card", purpose="support")
    assert decision is not None
    assert apply_view("card", CARD, decision, keep_bin=False) == mask("card", CARD, keep_bin=False)


def test_apply_view_redacted_returns_nothing_of_the_value() -> None:
    decision = Decision(Rule(operations=("detokenize",), kinds=("card",), purposes=("legal",), view="redacted"))
    assert apply_view("card", CARD, decision, keep_bin=True) == "[redacted]"


def test_apply_view_plain_without_fields_returns_the_value(policy: Policy) -> None:
    decision = policy.decide("payment_gateway", "detokenize", "card", purpose="payment")
    assert decision is not None
    assert apply_view("card", CARD, decision, keep_bin=False) == CARD


def test_machine_roles_are_marked_and_humans_are_the_default(policy: Policy) -> None:
    assert set(policy.machine_roles) == {"checkout", "payment_gateway", "shipping", "support", "marketing",
                                         "audit_export"}
    for role in ("admin", "privacy_officer", "auditor", "nobody"):
        assert policy.is_machine_role(role) is False
    assert [rule.operations for rule in policy.rules_of("audit_export")] == [("read_audit",)]


@pytest.mark.parametrize("rule", [
    '{ operations = ["export"], kinds = ["card"] }',
    '{ operations = ["manage_operators"] }',
    '{ operations = ["manage_clients"] }',
    '{ operations = ["disclose"] }',
    '{ operations = ["detokenize"], kinds = ["card"], purposes = ["legal"] }',
])
def test_a_machine_role_cannot_be_granted_what_needs_a_person(tmp_path: Path, rule: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f"[roles.bot]\nmachine = true\nrules = [{rule}]\n")
    with pytest.raises(ConfigurationError, match="machine role"):
        load_policy(path)
    path.write_text(f"[roles.person]\nrules = [{rule}]\n")
    assert load_policy(path).is_machine_role("person") is False
