"""capa's application layer: the command line, the demo, the local stack, the workload and the
chaos harness. It sits above everything else (``capa`` core <- ``connectors`` <- ``beam_jobs`` /
``spark_jobs`` <- ``capa_app``); nothing below imports it (``.importlinter`` holds that)."""
