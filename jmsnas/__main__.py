"""``python -m jmsnas``: the same as the ``jmsnas`` command."""

import sys

from .main import cli

sys.exit(cli())
