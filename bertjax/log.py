"""The one-line messages of every command: printed by process 0 alone (every process of a
multi-host run executes the same code)."""


def log(command: str, msg: str, stream=None) -> None:
    """Prints `bertjax COMMAND: msg` on process 0 only, to `stream` (default stdout; stderr
    where stdout carries a command's result)."""
    import jax  # here: `bertjax --help` and the data commands need not load JAX

    if jax.process_index() == 0:
        print(f"bertjax {command}: {msg}", file=stream, flush=True)
