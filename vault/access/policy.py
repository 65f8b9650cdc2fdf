"""Who may do what: a declarative, deny-by-default policy loaded from TOML.

A policy that names an unknown role, kind, operation, field, purpose or view refuses
to load, so a typo can never widen access. Admins and auditors may never be granted
detokenize (separation of duties).

Roles are either a machine's (`machine = true`: called with an API key) or a human's
(everything else: an operator with password, TOTP and a session). Human is the default, so a
role nobody thought about needs MFA. A machine role may not be granted what only a person
answerable for it should do (HUMAN_ONLY_OPERATIONS), so marking privacy_officer as a machine
in a custom policy cannot bring back a key that exports plaintext without MFA.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vault.errors import ConfigurationError

__all__ = ["Policy", "Rule", "Decision", "OPERATIONS", "PURPOSES", "HUMAN_ONLY_OPERATIONS", "SHOWN_VIEWS",
           "load_policy", "mask", "shown_view", "views_of"]

# Data operations act on tokens of the listed kinds; the others act on the vault itself.
DataOperation = Literal["tokenize", "detokenize", "read_metadata", "delete", "correct", "export"]
AdminOperation = Literal["read_audit", "manage_keys", "manage_operators", "manage_clients", "manage_subjects",
                         "manage_consents", "disclose", "manage_relay"]
Operation = DataOperation | AdminOperation
DATA_OPERATIONS: tuple[str, ...] = ("tokenize", "detokenize", "read_metadata", "delete", "correct", "export")
OPERATIONS: tuple[str, ...] = (*DATA_OPERATIONS, "read_audit", "manage_keys", "manage_operators",
                               "manage_clients", "manage_subjects", "manage_consents", "disclose", "manage_relay")
Purpose = Literal["payment", "fulfillment", "support", "marketing", "legal"]
PURPOSES: tuple[str, ...] = ("payment", "fulfillment", "support", "marketing", "legal")
KindName = Literal["card", "cvv", "address", "email", "phone", "name", "text"]
View = Literal["plain", "masked", "redacted"]
# What a caller is shown: a rule's view, or `fields` (plain, only the rule's fields of a card or address).
ShownView = Literal["plain", "fields", "masked", "redacted"]
SHOWN_VIEWS: tuple[ShownView, ...] = ("plain", "fields", "masked", "redacted")
STRUCTURED_KINDS = ("card", "address")
AddressField = Literal["name", "line1", "line2", "city", "region", "postal_code", "country", "phone", "use"]
CardField = Literal["pan", "exp_month", "exp_year", "holder"]
NO_PLAINTEXT_ROLES = ("admin", "auditor")
# Granted to human roles only: each needs an operator's session, TOTP and (for changes) a step-up.
HUMAN_ONLY_OPERATIONS = ("manage_keys", "manage_operators", "manage_clients", "export", "correct", "disclose",
                         "manage_subjects")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    operations: tuple[Operation, ...] = Field(min_length=1)
    kinds: tuple[KindName, ...] = ()
    purposes: tuple[Purpose, ...] = ()
    uses: tuple[Literal["shipping", "billing"], ...] = ()
    fields: tuple[AddressField | CardField, ...] = ()
    view: View = "plain"

    @model_validator(mode="after")
    def _detokenize_needs_purpose(self) -> Rule:
        if "detokenize" in self.operations and not self.purposes:
            raise ValueError("a detokenize rule must list the purposes it allows")
        if self.uses and set(self.kinds) != {"address"}:
            raise ValueError("`uses` applies to address rules only")
        data_ops = [op for op in self.operations if op in DATA_OPERATIONS]
        if data_ops and not self.kinds:
            raise ValueError(f"{data_ops[0]} needs the kinds it applies to")
        if self.kinds and len(data_ops) != len(self.operations):
            raise ValueError("a rule with kinds may only grant data operations")
        return self

    def matches(self, operation: str, kind: str | None, purpose: str | None, use: str | None) -> bool:
        if operation not in self.operations or (kind is not None and kind not in self.kinds):
            return False
        if self.purposes and purpose not in self.purposes:
            return False
        return not (self.uses and use not in self.uses)


class Role(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    machine: bool = False
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _machines_are_not_people(self) -> Role:
        if self.machine:
            for rule in self.rules:
                for operation in rule.operations:
                    if operation in HUMAN_ONLY_OPERATIONS:
                        raise ValueError(f"a machine role may not be granted {operation} (it needs a person with MFA)")
                if "detokenize" in rule.operations and "legal" in rule.purposes:
                    raise ValueError("a machine role may not detokenize for purpose legal")
        return self


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_bin: bool = False


MetadataField = Literal["brand", "last4", "exp_month", "exp_year", "reference", "country", "use"]


class Retention(BaseModel):
    """How long a kind is kept, and what a legal obligation keeps after erasure (GDPR Art. 17(3)(b))."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purge_after_unused_days: int | None = Field(default=None, ge=1)
    keep_after_erasure: tuple[MetadataField, ...] = ()
    keep_days: int = Field(default=0, ge=0)
    legal_basis: str = ""

    @model_validator(mode="after")
    def _kept_needs_basis(self) -> Retention:
        if self.keep_after_erasure and (not self.keep_days or not self.legal_basis):
            raise ValueError("keep_after_erasure needs keep_days and a legal_basis")
        return self


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: Settings = Settings()
    roles: dict[str, Role]
    retention: dict[KindName, Retention] = {}

    @model_validator(mode="after")
    def _separation_of_duties(self) -> _PolicyFile:
        for name in NO_PLAINTEXT_ROLES:
            role = self.roles.get(name)
            plaintext = ("detokenize", "export", "disclose")
            if role and any(op in rule.operations for rule in role.rules for op in plaintext):
                raise ValueError(f"role {name} may never see plaintext (separation of duties)")
        return self


@dataclass(frozen=True)
class Decision:
    """The rule that allowed an access; `None` from `decide` means deny."""

    rule: Rule

    @property
    def view(self) -> str:
        return self.rule.view


class Policy:
    """A loaded policy: answers "may this role do this?" and nothing else."""

    def __init__(self, document: _PolicyFile, source: str) -> None:
        self._doc = document
        self.source = source

    @property
    def keep_bin(self) -> bool:
        return self._doc.settings.keep_bin

    def retention(self, kind: str) -> Retention | None:
        return self._doc.retention.get(kind)  # type: ignore[call-overload, no-any-return]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self._doc.roles)

    def has_role(self, role: str) -> bool:
        return role in self._doc.roles

    def is_machine_role(self, role: str) -> bool:
        """Whether an API key may carry `role`; False for human roles and for unknown ones."""
        found = self._doc.roles.get(role)
        return found is not None and found.machine

    @property
    def machine_roles(self) -> tuple[str, ...]:
        return tuple(name for name, role in self._doc.roles.items() if role.machine)

    def rules_of(self, role: str) -> tuple[Rule, ...]:
        found = self._doc.roles.get(role)
        return found.rules if found else ()

    def may_use(self, role: str, operation: str) -> bool:
        """Whether any rule grants `operation` at all: decides 403 for a whole endpoint."""
        return any(operation in rule.operations for rule in self.rules_of(role))

    def decide(
        self, role: str, operation: str, kind: str | None = None, *, purpose: str | None = None,
        use: str | None = None,
    ) -> Decision | None:
        """The first rule granting this access, or None (deny). `kind` is None for vault-wide operations."""
        for rule in self.rules_of(role):
            if rule.matches(operation, kind, purpose, use):
                return Decision(rule)
        return None

    def why_denied(self, role: str, operation: str, kind: str, *, purpose: str | None = None,
                   use: str | None = None) -> str:
        """Why `decide` said no, for the audit trail only (callers see not_found whatever the reason)."""
        rules = [rule for rule in self.rules_of(role) if operation in rule.operations and kind in rule.kinds]
        if not rules:
            return "kind_not_allowed"
        if not any(not rule.purposes or purpose in rule.purposes for rule in rules):
            return "wrong_purpose"
        return "use_not_allowed"


def load_policy(path: Path | None = None) -> Policy:
    """Load and validate a policy file (the shipped default when `path` is None)."""
    try:
        if path is None:
            text = resources.files("vault.access").joinpath("policy.toml").read_text(encoding="utf-8")
            source = "default"
        else:
            text = path.read_text(encoding="utf-8")
            source = str(path)
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"policy file unreadable: {exc}") from exc
    try:
        return Policy(_PolicyFile.model_validate(raw), source)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise ConfigurationError(f"policy {source} refused: {problems}") from None


def mask(kind: str, value: Any, *, keep_bin: bool) -> Any:
    """The masked view: enough to recognise a value, never enough to use it."""
    if kind == "card":
        pan = str(value["pan"])
        head = pan[:6] if keep_bin and len(pan) >= 16 else ""
        return {"pan": head + "*" * (len(pan) - len(head) - 4) + pan[-4:],
                "exp_month": value["exp_month"], "exp_year": value["exp_year"]}
    if kind == "email":
        local, _, domain = str(value).partition("@")
        return f"{local[:1]}***@{domain}"
    if kind == "phone":
        text = str(value)
        return "*" * (len(text) - 2) + text[-2:]
    if kind == "address":
        return {"city": value.get("city"), "country": value.get("country"), "use": value.get("use")}
    if kind == "name":
        return str(value)[:1] + "***"
    return "***"


def shown_view(kind: str, decision: Decision) -> ShownView:
    """The view a detokenized value of `kind` is shown in under `decision` (it names the value's shape in
    the answer and in the OpenAPI document): `fields` is the plain view of a structured value cut to the
    rule's `fields`."""
    view = decision.rule.view
    if view != "plain":
        return view
    return "fields" if decision.rule.fields and kind in STRUCTURED_KINDS else "plain"


def views_of(kind: str) -> tuple[ShownView, ...]:
    """Every view a value of `kind` can be shown in."""
    return SHOWN_VIEWS if kind in STRUCTURED_KINDS else ("plain", "masked", "redacted")


def apply_view(kind: str, value: Any, decision: Decision, *, keep_bin: bool) -> Any:
    """What a caller actually receives under the rule that allowed it."""
    view = shown_view(kind, decision)
    if view == "redacted":
        return "[redacted]"
    if view == "masked":
        return mask(kind, value, keep_bin=keep_bin)
    if view == "fields":
        return {name: item for name, item in value.items() if name in decision.rule.fields}
    return value
