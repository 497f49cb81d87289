"""dj-khalti's API described to drf-spectacular, for projects that use it.

The app's ``ready()`` imports this module when drf-spectacular is installed;
dj-khalti itself never needs it. The description is the one DRF's own
generator gets (:mod:`django_khalti.schema`): each view's body, its answer
and every refusal with its codes.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema

from .schema import error_responses, success_description
from .views import KhaltiAPIView


class KhaltiViewExtension(OpenApiViewExtension):  # type: ignore[no-untyped-call]
    """Annotates every dj-khalti API view (a subclass of ``KhaltiAPIView``)."""

    target_class = KhaltiAPIView
    match_subclasses = True

    def view_replacement(self) -> type[KhaltiAPIView]:
        """The view, annotated with ``extend_schema``: body, answer and every refusal."""
        view: type[KhaltiAPIView] = self.target
        errors = error_responses(view)
        annotate = extend_schema(
            request=view.request_serializer,
            responses={
                view.success_status: OpenApiResponse(
                    view.response_serializer, description=success_description(view)
                ),
                **{
                    status: OpenApiResponse(response=answer.schema, description=answer.description)
                    for status, answer in errors.items()
                },
            },
            parameters=[
                OpenApiParameter(
                    name,
                    header["schema"],
                    OpenApiParameter.HEADER,
                    description=header["description"],
                    response=[status],
                )
                for status, answer in errors.items()
                for name, header in answer.headers.items()
            ],
        )
        # A subclass, so that the view itself is left as it is.
        return annotate(type(view.__name__, (view,), {"__doc__": view.__doc__}))
