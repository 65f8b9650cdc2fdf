"""Request and response shapes (pydantic), shared by validation and /openapi.json.

Unknown fields are rejected everywhere. The per-kind `value` shapes come from
vault.kinds so the document and the domain rules cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    create_model,
)

from vault.access.operators import OPERATOR_ROLES
from vault.errors import ValidationFailed
from vault.tokens.kinds import KINDS, VALUE_SCHEMAS
from vault.tokens.records import Limits
from vault.tokens.subjects import check_subject_id

KindName = Literal["card", "cvv", "address", "email", "phone", "name", "text"]
PurposeName = Literal["payment", "fulfillment", "support", "marketing", "legal"]
# Subject ids are opaque customer ids; '@' is refused so an email cannot become one.
def _subject_id(value: str) -> str:
    try:
        return check_subject_id(value)
    except ValidationFailed as error:
        raise ValueError(error.rule) from None


SubjectId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"),
                      AfterValidator(_subject_id)]
TokenText = Annotated[StrictStr, Field(min_length=1, max_length=256)]
LIMITS = Limits()  # the vault's own limits: the document and the checks here never disagree with it
BATCH_MAX = LIMITS.batch_max


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


Reference = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class TokenizeBody(Strict):
    kind: KindName
    value: Any
    subject_id: SubjectId | None = None
    deterministic: StrictBool = False
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=LIMITS.ttl_max)] | None = None
    reference: Reference | None = None


class CorrectBody(Strict):
    value: Any


class ConsentsBody(Strict):
    marketing: StrictBool | None = None
    tracking: StrictBool | None = None
    profiling: StrictBool | None = None
    sale: StrictBool | None = None
    source: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None


class RestrictionBody(Strict):
    restricted: StrictBool


class HoldBody(Strict):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=500)]
    until: AwareDatetime


class RequestBody(Strict):
    right: Literal["access", "portability", "rectification", "erasure", "restriction", "objection", "minor"]


class CloseRequestBody(Strict):
    outcome: Annotated[StrictStr, Field(min_length=1, max_length=500)]


class DisclosureBody(Strict):
    subject_id: SubjectId | None = None
    tokens: Annotated[list[TokenText], Field(max_length=BATCH_MAX)] = []
    case_reference: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    authority: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    justification: Annotated[StrictStr, Field(min_length=1, max_length=1000)]


class BatchBody(Strict):
    items: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=BATCH_MAX)]


class DetokenizeBody(Strict):
    tokens: Annotated[list[TokenText], Field(min_length=1, max_length=BATCH_MAX)]
    purpose: PurposeName


class ErrorDetail(Strict):
    code: str
    message: str
    field: str | None = None


class ErrorBody(Strict):
    error: ErrorDetail


class TokenOut(Strict):
    token: str
    kind: KindName
    metadata: dict[str, Any]
    expires_at: str | None


class BatchResultError(Strict):
    error: ErrorDetail


class BatchOut(Strict):
    results: list[TokenOut | BatchResultError]


class DetokenizedError(Strict):
    token: str | None
    error: ErrorDetail


class DetokenizeOut(Strict):
    # Each a DetokenizedError or a value of one kind in one view: api.http.openapi_values documents them.
    results: list[dict[str, Any]]


class HealthOut(Strict):
    status: str


def _documented_items() -> list[type[BaseModel]]:
    """One tokenize shape per kind, for the OpenAPI document only."""
    shapes: list[type[BaseModel]] = []
    for kind in KINDS:
        model = create_model(
            f"Tokenize{kind.capitalize()}",
            __config__=ConfigDict(extra="forbid"),
            kind=(Literal[kind], ...),  # type: ignore[arg-type]
            value=(VALUE_SCHEMAS[kind], ...),
            subject_id=(SubjectId | None, None),
            deterministic=(bool, False),
            ttl_seconds=(Annotated[int, Field(ge=1, le=LIMITS.cvv_ttl_max if kind == "cvv" else LIMITS.ttl_max)]
                         | None, None),
            reference=(Reference | None, None),
        )
        shapes.append(model)
    return shapes


DOCUMENTED_ITEMS = _documented_items()


class RotateBody(Strict):
    domain_keys: StrictBool = True


class RetireBody(Strict):
    below: Annotated[StrictInt, Field(ge=2, le=1_000_000)]


class ReencryptBody(Strict):
    domain_key: Annotated[StrictStr, Field(pattern=r"^dom_[0-9a-f]{24}$")]


class TransferBody(Strict):
    subjects: Annotated[list[SubjectId], Field(min_length=1, max_length=10)]
    recipient_public_key: Annotated[StrictStr, Field(min_length=1, max_length=1000)]


class LoginBody(Strict):
    username: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    password: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    totp: Annotated[StrictStr, Field(min_length=1, max_length=16)]


class EnrolBeginBody(Strict):
    code: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    password: Annotated[StrictStr, Field(min_length=1, max_length=256)]


class EnrolConfirmBody(Strict):
    code: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    totp: Annotated[StrictStr, Field(min_length=1, max_length=16)]


class PasswordChangeBody(Strict):
    current_password: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    new_password: Annotated[StrictStr, Field(min_length=1, max_length=256)]


class ReenrolBody(Strict):
    password: Annotated[StrictStr, Field(min_length=1, max_length=256)]


class OperatorBody(Strict):
    # The shapes vault.operators checks (its messages), documented so a fuzzer can get past them.
    username: Annotated[StrictStr, Field(min_length=2, max_length=64,
                                         json_schema_extra={"pattern": r"^[a-z][a-z0-9._-]{1,63}$"})]
    role: Annotated[StrictStr, Field(min_length=1, max_length=40,
                                     json_schema_extra={"enum": list(OPERATOR_ROLES)})]


class OperatorOut(Strict):
    id: str
    username: str
    role: str


class LoginOut(Strict):
    session_token: str
    expires_at: str
    operator: OperatorOut


class CorrectedOut(TokenOut):
    recipients_to_notify: list[str]


class JobStarted(Strict):
    job_id: str


class ApprovalOut(Strict):
    """A dual-control request (`vault.approvals.Approval.public`)."""

    id: str
    action: str
    params: dict[str, Any]
    requested_by: str
    requested_at: str | None
    expires_at: str | None
    status: str
    approved_by: str | None
    approved_at: str | None
    result: Any


class ApprovalFiled(Strict):
    approval: ApprovalOut
