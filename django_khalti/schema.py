"""dj-khalti's API described for OpenAPI.

Each API view names what it takes and answers: ``request_serializer``,
``response_serializer``, ``success_status`` and the ``refusals`` it may raise.
From that, :class:`KhaltiAutoSchema` describes it to DRF's own generator
(``generateschema``, ``get_schema_view``), and :mod:`django_khalti.spectacular`
to drf-spectacular when a project has it installed. Both take the error answers
from :func:`error_responses`, whose statuses are the refusals' own
``status_code``, the one place an HTTP status is given to a refusal.

DRF's own error bodies (field errors, ``{"detail"}``) are described as DRF's
default exception handler writes them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, cast

from django.core.validators import URLValidator
from rest_framework import serializers
from rest_framework.schemas.inspectors import DefaultSchema
from rest_framework.schemas.openapi import AutoSchema
from rest_framework.settings import api_settings

from .exceptions import KhaltiError, KhaltiInitiationRejected


class KhaltiAPIView(Protocol):
    """What the schema reads of a dj-khalti API view (:class:`django_khalti.views.KhaltiAPIView`,
    which imports this module, so it is described here rather than imported).
    """

    request_serializer: type[serializers.Serializer[Any]]
    response_serializer: type[serializers.Serializer[Any]]
    success_status: int
    refusals: tuple[type[KhaltiError], ...]


class KhaltiErrorResponse(NamedTuple):
    """One error status of an operation: its description, body schema and headers."""

    description: str
    schema: dict[str, Any]
    headers: dict[str, dict[str, Any]]


#: The codes :meth:`KhaltiAPIView.handle_exception <django_khalti.views.KhaltiAPIView>`
#: answers itself, beside the refusals: the shop's settings or its database failing.
UNAVAILABLE_CODES = ("not_configured", "unavailable")

#: DRF's ``{"detail": "..."}`` body (a body that does not parse, authentication,
#: content negotiation, throttling).
DETAIL_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
    "additionalProperties": False,
}

_MESSAGES: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def refusal_body(codes: list[str], *, errors: bool = False) -> dict[str, Any]:
    """The body of a refusal: ``{"code", "detail"}``, ``code`` one of ``codes``."""
    properties: dict[str, Any] = {
        "code": {"type": "string", "enum": codes},
        "detail": {"type": "string"},
    }
    if errors:
        properties["errors"] = {
            "type": "object",
            "description": "initiation_rejected: Khalti's messages, by field.",
        }
    return {
        "type": "object",
        "properties": properties,
        "required": ["code", "detail"],
        "additionalProperties": False,
    }


def field_errors_body(serializer: serializers.Serializer[Any]) -> dict[str, Any]:
    """DRF's field errors for ``serializer``: ``{field: [messages]}`` (a nested
    serializer's own field errors, or messages for the field as a whole), and the
    errors of the body as a whole under ``NON_FIELD_ERRORS_KEY``.
    """
    properties: dict[str, Any] = {
        name: {"anyOf": [_MESSAGES, field_errors_body(field)]}
        if isinstance(field, serializers.Serializer)
        else _MESSAGES
        for name, field in serializer.fields.items()
        if not field.read_only
    }
    properties[api_settings.NON_FIELD_ERRORS_KEY] = _MESSAGES
    return {
        "type": "object",
        "properties": properties,
        "minProperties": 1,
        "additionalProperties": False,
    }


def error_responses(view: type[KhaltiAPIView]) -> dict[int, KhaltiErrorResponse]:
    """Every error status ``view`` answers, with its body: its refusals (each
    under its ``status_code``), then DRF's own answers.
    """
    codes: dict[int, list[str]] = {}
    with_errors: set[int] = set()
    for refusal in view.refusals:
        status = refusal.status_code
        if refusal.code not in codes.setdefault(status, []):
            codes[status].append(refusal.code)
        if issubclass(refusal, KhaltiInitiationRejected):
            with_errors.add(status)
    codes.setdefault(503, []).extend(UNAVAILABLE_CODES)

    def refused(status: int) -> dict[str, Any]:
        return refusal_body(codes[status], errors=status in with_errors)

    answers = {
        status: KhaltiErrorResponse(
            _REFUSAL_DESCRIPTIONS.get(status, "Refused") + ": " + ", ".join(found) + ".",
            refused(status),
            {},
        )
        for status, found in codes.items()
    }
    bad_request = [refused(400)] if 400 in codes else []
    answers[400] = KhaltiErrorResponse(
        'Malformed: DRF\'s field errors, or {"detail"} for a body that does not parse'
        + (f"; or refused: {', '.join(codes[400])}." if 400 in codes else "."),
        {
            "anyOf": [
                *bad_request,
                field_errors_body(view.request_serializer()),
                DETAIL_BODY,
            ]
        },
        {},
    )
    answers.update(
        {
            401: KhaltiErrorResponse(
                "The project's DRF authentication refused the credentials sent.", DETAIL_BODY, {}
            ),
            403: KhaltiErrorResponse(
                "The project's DRF authentication refused the request "
                "(e.g. a logged-in session without the CSRF token).",
                DETAIL_BODY,
                {},
            ),
            406: KhaltiErrorResponse("The Accept header names no JSON.", DETAIL_BODY, {}),
            415: KhaltiErrorResponse("The body is not JSON nor a form.", DETAIL_BODY, {}),
            429: KhaltiErrorResponse(
                'Throttled (the "khalti" rate, or the project\'s throttles). Never reaches Khalti.',
                DETAIL_BODY,
                {
                    "Retry-After": {
                        "description": "Seconds to wait before trying again.",
                        "schema": {"type": "integer"},
                    }
                },
            ),
        }
    )
    return dict(sorted(answers.items()))


def success_description(view: type[KhaltiAPIView]) -> str:
    """What the success answer is: its serializer's docstring, first line."""
    return next(iter((view.response_serializer.__doc__ or "").strip().splitlines()), "")


_REFUSAL_DESCRIPTIONS = {
    404: "Unknown",
    409: "Conflict",
    502: "Khalti gave no usable answer; the payment is pending",
    503: "Khalti, the shop's settings or its database unavailable",
    504: "Khalti did not answer in time; the payment is pending",
}


class KhaltiAutoSchema(AutoSchema):
    """DRF's OpenAPI inspector for dj-khalti's API views: body, answer and every refusal."""

    @property
    def khalti_view(self) -> KhaltiAPIView:
        """The dj-khalti view being described."""
        return cast("KhaltiAPIView", self.view)

    def get_request_serializer(self, path: str, method: str) -> serializers.Serializer[Any]:
        """The body the view takes: its ``request_serializer``."""
        return self.khalti_view.request_serializer()

    def get_response_serializer(self, path: str, method: str) -> serializers.Serializer[Any]:
        """The success answer: the view's ``response_serializer``."""
        return self.khalti_view.response_serializer()

    def get_operation_id_base(self, path: str, method: str, action: str) -> str:
        """``KhaltiVerify``, ``KhaltiEpaymentInitiate``: named after the request body."""
        return self.get_component_name(self.khalti_view.request_serializer())

    def get_component_name(self, serializer: serializers.BaseSerializer[Any]) -> str:
        """The serializer's ``Meta.ref_name`` when it has one, else DRF's name."""
        # Our components carry the ``Khalti`` prefix (``Meta.ref_name``, which
        # drf-spectacular reads as well), so that they never meet a project's.
        ref_name = getattr(getattr(serializer, "Meta", None), "ref_name", None)
        return str(ref_name) if ref_name else str(super().get_component_name(serializer))

    def map_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        """DRF's validators as schema keywords, without Python-only URL patterns."""
        super().map_field_validators(field, schema)
        if any(isinstance(validator, URLValidator) for validator in field.validators):
            # DRF writes Django's URL regex as the pattern: Python's syntax, which
            # OpenAPI tools (ECMA regexes) cannot compile. The format says it.
            schema.pop("pattern", None)

    def get_responses(self, path: str, method: str) -> dict[str, Any]:
        """The success answer and every error status the view can give, with bodies."""
        self.response_media_types = self.map_renderers(path, method)
        serializer = self.get_response_serializer(path, method)
        responses: dict[str, Any] = {
            str(self.khalti_view.success_status): {
                "description": success_description(type(self.khalti_view)),
                "content": {
                    media_type: {"schema": self.get_reference(serializer)}
                    for media_type in self.response_media_types
                },
            }
        }
        for status, answer in error_responses(type(self.khalti_view)).items():
            responses[str(status)] = {
                "description": answer.description,
                "content": {
                    media_type: {"schema": answer.schema}
                    for media_type in self.response_media_types
                },
                **({"headers": answer.headers} if answer.headers else {}),
            }
        return responses


class KhaltiSchema(DefaultSchema):
    """The ``schema`` of dj-khalti's API views.

    Under DRF's OpenAPI generator (``DEFAULT_SCHEMA_CLASS`` DRF's ``AutoSchema``,
    or a project's subclass of it) the inspector is :class:`KhaltiAutoSchema`,
    over the project's class; any other ``DEFAULT_SCHEMA_CLASS`` (drf-spectacular:
    see :mod:`django_khalti.spectacular`) is used as it is.
    """

    def __get__(self, instance: Any, owner: Any) -> Any:
        inspector = super().__get__(instance, owner)
        if isinstance(inspector, AutoSchema) and not isinstance(inspector, KhaltiAutoSchema):
            inspector = _khalti_over(type(inspector))()
            inspector.view = instance
        return inspector


_OVER: dict[type[AutoSchema], type[KhaltiAutoSchema]] = {AutoSchema: KhaltiAutoSchema}


def _khalti_over(base: type[AutoSchema]) -> type[KhaltiAutoSchema]:
    """:class:`KhaltiAutoSchema` over the project's ``AutoSchema`` class (made once)."""
    if base not in _OVER:
        _OVER[base] = type(f"Khalti{base.__name__}", (KhaltiAutoSchema, base), {})
    return _OVER[base]
