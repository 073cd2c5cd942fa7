"""Timbral core: interactions, the NMF recommender, top-k selection, artifacts and ranking metrics.

Only numpy, scipy and scikit-learn are used here; MLflow lives in ``training/``, BentoML and Redis in
``service/``. Importing this package does no work.
"""

__version__ = "0.1.0"
