"""Answers serialised here, as FastAPI would for their ``response_model`` (the same validation
and the same pydantic serializer, so the same bytes), so that the bytes cached with an answer or
stored with an ``Idempotency-Key`` are the bytes sent."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from pydantic import TypeAdapter

from serving.schemas import FeedbackOut, ItemDetail, RecommendationsOut

_RECOMMENDATIONS = TypeAdapter(RecommendationsOut)
_FEEDBACK = TypeAdapter(FeedbackOut)
_ITEM = TypeAdapter(ItemDetail)


def recommendations_json(content: dict[str, Any]) -> bytes:
    return _RECOMMENDATIONS.dump_json(_RECOMMENDATIONS.validate_python(content, from_attributes=True), by_alias=True)


def feedback_json(content: dict[str, Any]) -> bytes:
    return _FEEDBACK.dump_json(_FEEDBACK.validate_python(content))


def item_json(content: dict[str, Any]) -> bytes:
    return _ITEM.dump_json(_ITEM.validate_python(content))


def json_response(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")
