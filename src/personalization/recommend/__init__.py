"""Recommendations (issue 16): candidate sources merged and ranked in one place, trained nightly.

Entry points: :class:`~personalization.recommend.service.Recommender` (serving),
:mod:`~personalization.recommend.nightly` (training into PostgreSQL) and
:mod:`~personalization.recommend.evaluate` (offline evaluation against baselines).
"""
