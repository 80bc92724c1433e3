"""The ``jmsnas`` command line, a layer above the library (``docs/ARCHITECTURE.md``).

One module per command, each with ``add_parser(commands)`` and ``run(args) -> int``; the
command's heavy imports (torch, the search, the deployment) happen inside ``run``, so that
``jmsnas --help`` and ``jmsnas simulate`` start fast. No library package imports this one.
``jmsnas.main.main`` is the entry point (``jmsnas`` and ``python -m jmsnas``).
"""
