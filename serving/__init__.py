"""The HTTP service over the serve-time layer (:mod:`recommender`); :func:`serving.app.create_app` builds it."""
