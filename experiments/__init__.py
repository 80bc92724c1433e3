"""The ``jmsnas`` command line and the shipped example scenarios (``experiments/scenarios``)."""
