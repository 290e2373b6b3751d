"""Request and response models of the HTTP API (shapes from DESIGN.md, bounds on every field).

Bounds live here so they appear in the OpenAPI schema and FastAPI answers 422 before any model
code runs. Item and user ids are ``int | str``: ids are kept as the data gave them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_K = 1000
MAX_LIKED = 500
MAX_GENRES = 50

Id = int | str
# ids coming in: bounded so a huge number or string cannot reach the id maps (int64 indexes);
# +-2**53 is exact in JSON/JavaScript numbers, so clients and the schema agree on the bound
InId = Annotated[int, Field(ge=-(2**53), le=2**53)] | Annotated[str, Field(min_length=1, max_length=200)]
SimilarBy = Literal["hybrid", "content", "collaborative"]


class ErrorOut(BaseModel):
    """Every error answer: a readable message, plus field errors for 422."""

    detail: str
    errors: list[dict[str, object]] | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]


class StatusOut(BaseModel):
    status: str
    model_version: str


class Because(BaseModel):
    """One of the user's own movies that a recommendation is close to."""

    item_id: Id
    title: str
    reason: str
    similarity: float


class ItemOut(BaseModel):
    """A movie as listed in results."""

    item_id: Id
    title: str
    year: int | None = None
    genres: list[str]
    # absent rather than null: search results carry no score, only explained lists a because
    score: float | None = Field(None, exclude_if=lambda v: v is None)
    because: list[Because] | None = Field(None, exclude_if=lambda v: v is None)


class ItemDetail(BaseModel):
    """A movie's metadata (``GET /items/{item_id}``, ``POST /items``)."""

    item_id: Id
    title: str
    year: int | None = None
    genres: list[str]
    description: str | None = None
    tags: str | None = None
    popularity: int = Field(0, description="number of training ratings (0 for cold or added movies)")


class RecommendationsOut(BaseModel):
    user_id: Id | None
    model_version: str
    items: list[ItemOut]


class SimilarOut(BaseModel):
    item_id: Id
    by: SimilarBy
    model_version: str
    items: list[ItemOut]


class SearchOut(BaseModel):
    query: str
    items: list[ItemOut]


class WorkerOut(BaseModel):
    """One worker process of the service (of any server sharing the online state)."""

    worker: str = Field(description="host:pid:token")
    model_version: str | None
    bundle: str | None


class ReloadOut(BaseModel):
    status: Literal["reloaded", "unchanged", "rolled_back"]
    model_version: str = Field(description="the version the service now serves")
    previous_version: str | None
    path: str
    generation: int | None = Field(None, description="of the choice recorded in the online state")
    workers: list[WorkerOut] = Field(default_factory=list, description="live workers serving model_version when answered")
    pending: list[WorkerOut] = Field(
        default_factory=list, description="live workers not serving it yet (they follow within the watch interval once they can load it)"
    )


class VersionOut(BaseModel):
    """One bundle in the serving directory."""

    version: str
    path: str
    created: str | None
    active: bool = Field(description="served by the worker that answered")
    chosen: bool = Field(False, description="recorded in the online state as what every worker serves")
    workers: list[str] = Field(default_factory=list, description="live workers serving it")


class VersionsOut(BaseModel):
    versions: list[VersionOut] = Field(description="newest first")


class RatingIn(BaseModel):
    """One live rating (``POST /users/{user_id}/ratings``)."""

    model_config = ConfigDict(extra="forbid")

    item_id: InId
    rating: float = Field(..., allow_inf_nan=False, description="on the data's rating scale (checked against the bundle)")


class FeedbackOut(BaseModel):
    user_id: Id
    created: bool = Field(description="the user was new and has been added")
    recorded: int = Field(description="ratings written to the feedback log")
    history_length: int = Field(description="movies in the user's history after the update")
    model_version: str


class _Filters(BaseModel):
    year_min: int | None = Field(None, ge=0, le=3000)
    year_max: int | None = Field(None, ge=0, le=3000)
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0 = pure relevance; 1 = most diverse (MMR)")
    explain: bool = Field(False, description="attach up to three of the user's own movies to each result")

    @model_validator(mode="after")
    def _years_in_order(self) -> "_Filters":
        if self.year_min is not None and self.year_max is not None and self.year_min > self.year_max:
            raise ValueError(f"year_min ({self.year_min}) is after year_max ({self.year_max})")
        return self


class UserRecommendationQuery(_Filters):
    """Query string of ``GET /users/{user_id}/recommendations``."""

    k: int = Field(10, ge=1, le=MAX_K)
    exclude_seen: bool = True
    genres: str | None = Field(None, max_length=2000, description="comma-separated; any of them qualifies")
    exclude: str | None = Field(None, max_length=20_000, description="comma-separated item ids never to recommend")


class NewUserRequest(_Filters):
    """Body of ``POST /recommendations``: a new user described by a few liked movies."""

    model_config = ConfigDict(extra="forbid")

    liked_items: list[InId] = Field(..., min_length=1, max_length=MAX_LIKED)
    k: int = Field(10, ge=1, le=MAX_K)
    genres: list[str] | None = Field(None, max_length=MAX_GENRES)
    exclude_items: list[InId] | None = Field(None, max_length=MAX_K)


class SimilarQuery(BaseModel):
    k: int = Field(10, ge=1, le=MAX_K)
    by: SimilarBy = "hybrid"


class SearchQuery(BaseModel):
    q: str = Field(..., min_length=1, max_length=200)
    limit: int = Field(10, ge=1, le=100)


class NewItemRequest(BaseModel):
    """Body of ``POST /items``: a movie added at run time (content and genres only)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(..., min_length=1, max_length=300)
    genres: list[str] = Field(default_factory=list, max_length=MAX_GENRES)
    description: str | None = Field(None, max_length=20_000)
    item_id: InId | None = None
    year: int | None = Field(None, ge=0, le=3000)
