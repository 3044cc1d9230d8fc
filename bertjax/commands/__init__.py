"""The `bertjax` subcommands, one module each (cli.py lists them): parse, check, call the
library."""
