"""The `bertjax` command: parses arguments, then calls one library function per subcommand.

Each subcommand lives in its own module, which exposes `register(subparsers)`; the module
adds its parser and sets `func=` to a function taking the parsed args and returning an exit
code. Modules are imported only when listed here, so `bertjax --help` stays fast.
"""

import argparse
import atexit
import importlib
import os
import sys

from bertjax import interrupt
from bertjax.errors import UserError

# subcommand module, in the order `bertjax --help` lists them.
SUBCOMMAND_MODULES = (
    "bertjax.commands.tokenizer",
    "bertjax.commands.prepare",
    "bertjax.bench",
    "bertjax.commands.batches",
    "bertjax.commands.train",
    "bertjax.commands.evaluate",
    "bertjax.commands.aot_compile",
    "bertjax.commands.export",
    "bertjax.commands.demo",
    "bertjax.commands.plot",
    "bertjax.commands.finetune",
    "bertjax.commands.features",
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
    """Entry point of the console script (`argv` None: this process's command line)."""
    interrupt.install()  # first: a Ctrl-C at any later moment ends as one line, exit 130
    words = sys.argv[1:] if argv is None else argv
    command = "bertjax" + (f" {words[0]}" if words and not words[0].startswith("-") else "")
    try:
        args = build_parser().parse_args(argv)
        command = f"bertjax {args.command}"
        code = int(args.func(args) or 0)
        interrupt.check()  # a Ctrl-C that Python swallowed (in a gc callback) still counts
        return code
    except UserError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not e.filename:
            raise
        # The file system refused (a workdir that is a file, no permission, disk full): one
        # line naming the path, as for any other input the user must fix.
        print(f"{command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # The work in progress has cleaned up on the way here (partial outputs removed,
        # checkpoints complete); the exception may say what was saved.
        print(f"{command}: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        if argv is None:
            _exit_now(130)
        return 130


def _exit_now(code: int) -> None:
    """Ends the process after the exit handlers, skipping the interpreter's teardown: after
    an interrupt, threads of XLA (a compilation) or orbax may still run, and tearing the
    interpreter down under them crashed (SIGSEGV) after the message was printed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
