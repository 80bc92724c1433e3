"""The experiments (one module each, run by ``jmsnas experiment``) and the shipped example
scenarios (``experiments/scenarios``, looked up by :mod:`experiments.shipped`)."""
