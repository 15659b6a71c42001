"""The `butd` command line: the only package that imports click.

Each command is a thin function over one library call (the task layer, the extraction runner, the
store tools). Heavy modules (torch, ray) are imported only when a command that needs them runs.
Every user mistake is one line ``Error: <what> (<where>): <what to do>``: exit 2 for usage, 1 for failure.
"""

from __future__ import annotations

import importlib

import click

from butd import __version__
from butd.errors import EXIT_FAILURE, UserError, io_error

__all__ = ["main"]


class OneLineError(click.ClickException):
    """A click exception that prints ``Error: <one line>`` and exits with the given code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(exc: BaseException) -> OneLineError:
    """The one-line CLI error for a library exception."""
    if isinstance(exc, UserError):
        return OneLineError(exc.line(), exc.exit_code)
    if isinstance(exc, OSError) and exc.errno is not None:
        return OneLineError(io_error(exc).line(), EXIT_FAILURE)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return OneLineError(text, EXIT_FAILURE)


def _failures() -> tuple[type[BaseException], ...]:
    """Library exceptions that mean "this input cannot be used" (shown as one line, exit 1); anything
    else is a bug and keeps its traceback."""
    import sys

    from butd.shards.legacy_pickle import UnsafePickleError
    from butd.shards.spec import StoreError

    loop = sys.modules.get("butd.train.loop")  # only loaded (with torch) when a command trained something
    return (ValueError, OSError, StoreError, UnsafePickleError, *([loop.NonFiniteLossError] if loop else []))


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used, and that renders library errors in one line."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except UserError as exc:
            raise one_line(exc) from None
        except _failures() as exc:
            raise one_line(exc) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, lazy={
    "extract": "butd.cli.extract:extract_cmd",
    "download": "butd.cli.shards:download_cmd",
    "shards": "butd.cli.shards:shards",
    "weights": "butd.cli.extract:weights",
    "train": "butd.cli.tasks:train_cmd",
    "eval": "butd.cli.tasks:eval_cmd",
    "caption": "butd.cli.tasks:caption_cmd",
    "answer": "butd.cli.tasks:answer_cmd",
    "report": "butd.cli.tasks:report_cmd",
    "toy": "butd.cli.demo:toy",
    "demo": "butd.cli.demo:demo_cmd",
    "registries": "butd.cli.demo:registries_cmd",
})
@click.version_option(__version__, prog_name="butd")
def main() -> None:
    """Bottom-up / top-down attention: extract features into verified shards, train and evaluate."""
