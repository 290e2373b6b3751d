"""The serve-time recommender: one catalogue and id map, one query path, one owner of online state.

It sits above the stages (content -> retrieval -> ranking) and below the jobs (train,
candidates, evaluate, report, tune, demo) and the HTTP service: serving, batch candidates,
evaluation and the report all load a bundle into :class:`HybridRecommender` and ask it, and
every recommendation goes through :func:`recommender.query.recommend`. The stages never import
this package.
"""

from recommender.ids import IdTypeError, UnknownIdError
from recommender.catalogue import SimilarBy
from recommender.model import HybridRecommender
from recommender.query import Filters, Recommendations

__all__ = ["Filters", "HybridRecommender", "IdTypeError", "Recommendations", "SimilarBy", "UnknownIdError"]
