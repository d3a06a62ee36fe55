"""Machine learning on the fleet's heartbeats (issue 7).

``data`` is the shared data model, ``simulate`` the labelled-fault fleet simulator, ``static_rules`` the
baseline (the alert rules of shared/domain applied to a stream), ``evaluate`` the event-level scoring harness
(``python -m shared.ml.evaluate``). scikit-learn is imported only where a model is trained or scored.
"""
