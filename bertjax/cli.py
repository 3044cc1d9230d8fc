"""The `bertjax` command: parses arguments, then calls one library function per subcommand.

Each subcommand lives in its own module, which exposes `register(subparsers)`; the module
adds its parser and sets `func=` to a function taking the parsed args and returning an exit
code. Modules are imported only when listed here, so `bertjax --help` stays fast.
"""

import argparse
import importlib
import sys

from bertjax.errors import UserError

# subcommand module, in the order `bertjax --help` lists them.
SUBCOMMAND_MODULES = (
    "bertjax.data.tokenizer_cli",
    "bertjax.data.prepare",
    "bertjax.bench",
    "bertjax.data.batches_cli",
    "bertjax.train.train_cli",
    "bertjax.train.eval_cli",
    "bertjax.compile_cli",
    "bertjax.export",
    "bertjax.demo",
    "bertjax.plot",
    "bertjax.finetune.finetune_cli",
    "bertjax.features",
)


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of the `bertjax` command with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="bertjax", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"bertjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not e.filename:
            raise
        # The file system refused (a workdir that is a file, no permission, disk full): one
        # line naming the path, as for any other input the user must fix.
        print(f"bertjax {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
