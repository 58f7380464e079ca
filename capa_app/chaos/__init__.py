"""The one fault-injection harness: :mod:`.harness` (the run and its oracle) and ``python -m
capa_app.chaos`` (``make chaos``: the long run, its report and its docs section)."""
