"""The ``sevx86`` command line: one module per subcommand."""
