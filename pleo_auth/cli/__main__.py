"""``python -m pleo_auth.cli``: the ``pleo-auth`` command."""

import sys

from . import main

sys.exit(main())
