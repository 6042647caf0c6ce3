"""``personalization up``: the whole platform as supervised child processes.

* :mod:`.components`: the registry of components (API, relay, learners, invalidator,
  scheduler, and the background workers other parts add) and a node's plan by role.
* :mod:`.supervisor`: child processes, restarts with bounded exponential back-off,
  ordered shutdown, the state file (:mod:`.state`) that ``status`` reads.
* :mod:`.runner`: services (configured, or the embedded stack), schema, topics, then the
  supervisor.  :mod:`.status` and :mod:`.lag`: ``personalization status`` and
  ``GET /healthz/platform``.  :mod:`.parentdeath`: children that die with their parent.
"""
