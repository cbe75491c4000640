"""One module per `mcl` subcommand.

Each module defines ``NAME`` (the subcommand), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args, extra) -> int`` where ``extra`` holds the unparsed ``key=value`` overrides. ``mcl.cli``
finds the modules here; adding a subcommand means adding a module, nothing else.
"""
