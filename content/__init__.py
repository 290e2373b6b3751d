"""Content stage: TF-IDF item vectors (:class:`ContentModel`) and similar-movie lookup plus the
content-only recommender (:class:`ContentSimilarity`). Imports only from the ``movierec`` core."""

from content.similar import ContentSimilarity
from content.tfidf import ContentModel

__all__ = ["ContentModel", "ContentSimilarity"]
