"""Sub-commands of the ``poisoncam`` CLI: each module has ``add_arguments(parser)`` and ``run(args)``."""
