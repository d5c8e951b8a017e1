"""The `libra-edge` command line: one module per subcommand, each with `register()`."""
