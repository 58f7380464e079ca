"""``python -m capa_app.chaos`` (``make chaos``): the long fault-injection run."""

import sys

from capa_app.chaos.report import main

sys.exit(main())
