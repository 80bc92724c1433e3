"""``python -m jmsnas``: the same as the ``jmsnas`` command."""

import sys

from .main import main

sys.exit(main())
