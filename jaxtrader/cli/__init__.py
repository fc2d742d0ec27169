"""The `jaxtrader` command line: a click group, global options and error handling.

Only click and the standard library are imported at module level so `--help` stays instant; each
command imports JAX, pandas and friends inside its own function. Any `JaxTraderError` becomes one
`error: ...` line on stderr and exit code 2 (a traceback only with `--debug`); Ctrl-C is exit 130
and one "interrupted" line, also when Python swallowed it inside a gc callback (`interrupts`).
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from jaxtrader.cli.common import (
    INTERRUPTED_EXIT,
    CliState,
    HintGlobalOptionsGroup,
    train_knob_options,
    train_knob_overrides,
)
from jaxtrader.cli.interrupts import watching
from jaxtrader.errors import JaxTraderError, path_problem

# Commands that train K seeds in one step: `main` restarts them on tcmalloc where it is installed,
# else with huge pages; on glibc, mmap stays on outside their train loops (prepare_seed_training).
SEED_STACKING_COMMANDS = frozenset({"walkforward", "study"})
# Commands `main` restarts on tcmalloc where it is installed (runtime.restart_environment).
TCMALLOC_COMMANDS = SEED_STACKING_COMMANDS | {"train"}
# The group's options that take a value, to find the command name in argv before click parses it.
_GROUP_VALUE_OPTIONS = frozenset({"--log-format", "--config"})


class CommandInterrupted(Exception):
    """A KeyboardInterrupt (Ctrl-C) in a command without its own handler, carried past click's
    `Command.main`, which would write a bare newline to stderr before anything `main` writes: a
    line that is no JSON record under `--log-format json`. Not a KeyboardInterrupt subclass, so
    that click lets it through."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise CommandInterrupted from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Human-readable log lines or JSON lines (one object per record).",
)
@click.option("--config", "config_path", type=str, default=None, help="TOML config file.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level log records.")
@click.version_option(package_name="jaxtrader")
@click.pass_context
def cli(
    ctx: click.Context, log_format: str, config_path: str | None, debug: bool, verbose: bool
) -> None:
    """jaxtrader: train LSTM/Transformer models on candles with JAX and trade them with risk limits.

    The commands that read candles (data, features, train, walkforward, study) work offline on an
    embedded synthetic market when --data is not given; evaluate uses its checkpoint's market.
    """
    import logging

    from jaxtrader.logs import setup_logging
    from jaxtrader.runtime import tune_malloc, tune_malloc_for_seed_commands

    # Before any command allocates or starts a thread: XLA's per-step buffers reuse the heap;
    # where K seeds share a step, only inside train loops (runtime.prepare_seed_training).
    if ctx.invoked_subcommand in SEED_STACKING_COMMANDS:
        tune_malloc_for_seed_commands()
    else:
        tune_malloc()
    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)  # type: ignore[arg-type]
    ctx.obj = CliState(config_path=config_path, log_format=log_format, debug=debug)


@cli.group("config", cls=HintGlobalOptionsGroup)
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("show")
@train_knob_options
@click.pass_obj
def config_show(state: CliState, **knobs: Any) -> None:
    """Print the effective config (defaults < --config FILE < the training-knob flags) as TOML."""
    from jaxtrader.config import to_toml

    click.echo(to_toml(state.config(train_knob_overrides(**knobs))), nl=False)


def _register() -> None:
    from jaxtrader.cli import (
        data_cmds,
        evaluate_cmds,
        features_cmds,
        study_cmds,
        trade_cmds,
        train_cmds,
        walkforward_cmds,
    )

    for module in (
        data_cmds,
        features_cmds,
        train_cmds,
        walkforward_cmds,
        study_cmds,
        evaluate_cmds,
        trade_cmds,
    ):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def _group_args(args: list[str]) -> tuple[dict[str, str], str | None]:
    """The group's value options given before the subcommand, and the subcommand's name (None if
    there is none), read from `args` before click parses them."""
    values: dict[str, str] = {}
    option = None
    for arg in args:
        if option is not None:
            values[option], option = arg, None
        elif arg in _GROUP_VALUE_OPTIONS:
            option = arg
        elif arg.startswith("-"):
            name, _, value = arg.partition("=")
            if value and name in _GROUP_VALUE_OPTIONS:
                values[name] = value
        else:
            return values, arg
    return values, None


def _command_name(args: list[str]) -> str | None:
    return _group_args(args)[1]


def _restart_on_tcmalloc(args: list[str]) -> None:
    """Restarts this process for `walkforward`, `study` and `train` with tcmalloc preloaded where
    it is installed; else the seed commands restart with glibc's huge-page tunable. Both are read
    only at process start (`runtime.restart_environment`). Returns when there is nothing to
    change. Only from `main` (a real process, argv from the command line): never from the click
    group, which tests also invoke inside their own process."""
    command = _command_name(args)
    if command not in TCMALLOC_COMMANDS or {"-h", "--help"} & set(args):
        return
    from jaxtrader.runtime import restart_environment

    env = restart_environment(huge_pages=command in SEED_STACKING_COMMANDS)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, sys.orig_argv, env)
        except OSError:  # the command still runs, on glibc's heap
            return


def _fail(json_logs: bool, exit_code: int, event: str, message: str, kind: str) -> NoReturn:
    """The one line a failed command leaves on stderr: `error: ...` text, or under `--log-format
    json` a JSON record with the same message, the error's kind and the exit code."""
    import logging

    from jaxtrader.logs import notice, setup_logging

    if json_logs:
        setup_logging("json")  # a usage error comes before the group has set it up
        notice(event, message, logging.ERROR, kind=kind, exit_code=exit_code)
    else:
        plain = event in ("interrupted", "aborted")
        click.echo(message if plain else f"error: {message}", err=True)
    sys.exit(exit_code)


# click >= 8.2 raises this for a group called without a command (older click prints the help and
# exits 0 itself); an empty tuple catches nothing.
_NO_ARGS_IS_HELP: type[click.ClickException] | tuple[()] = getattr(
    click.exceptions, "NoArgsIsHelpError", ()
)


def _command_path(args: list[str]) -> str:
    """The command `args` name ("jaxtrader data info"), read the way click reads them: the group's
    options, then command names as long as they name a subcommand."""
    command: click.Command = cli
    names = ["jaxtrader"]
    option = None
    for arg in args:
        if option is not None:
            option = None
        elif command is cli and arg in _GROUP_VALUE_OPTIONS:
            option = arg
        elif arg.startswith("-"):
            continue
        elif isinstance(command, click.Group) and arg in command.commands:
            command = command.commands[arg]
            names.append(arg)
        else:
            break
    return " ".join(names)


def _usage_message(e: click.ClickException, args: list[str]) -> str:
    """click's message for a wrong command line as one line, with where to look instead of
    click's usage block: "Missing option '--out'; see 'jaxtrader features compute --help'"."""
    message = e.format_message()
    if message.endswith(".") and not message.endswith("..."):  # "...'--out'.; see" reads badly
        message = message[:-1]
    if not isinstance(e, click.UsageError):
        return message
    if e.ctx is None:  # click's parser raises some errors ("requires an argument") without it
        return f"{message}; see '{_command_path(args)} --help'"
    if e.ctx.command.get_help_option(e.ctx) is None:
        return message
    return f"{message}; see '{e.ctx.command_path} --help'"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point with one-line errors and stable exit codes."""
    args = sys.argv[1:] if argv is None else argv
    if argv is None:
        _restart_on_tcmalloc(args)
    debug = "--debug" in args
    # Errors follow --log-format even when they come before click has parsed anything.
    json_logs = _group_args(args)[0].get("--log-format") == "json"
    try:
        with watching() as watch:  # a Ctrl-C Python swallowed inside a gc callback: cli.interrupts
            cli.main(args=args, prog_name="jaxtrader", standalone_mode=False)
        if watch.swallowed:
            # Its redelivery was lost too, and the command ran to its end: still an interrupt.
            raise KeyboardInterrupt
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except _NO_ARGS_IS_HELP as e:
        # A group called without its command (`jaxtrader config`) shows its help, as before.
        if not json_logs:
            e.show()
            sys.exit(e.exit_code)
        _fail(True, e.exit_code, "usage_error", e.format_message(), type(e).__name__)
    except click.ClickException as e:
        _fail(json_logs, e.exit_code, "usage_error", _usage_message(e, args), type(e).__name__)
    except (CommandInterrupted, KeyboardInterrupt):
        # Ctrl-C in a command without its own handler (evaluate, data, features, and before a
        # command's handler is installed): a stop the user asked for, so 130 like the others,
        # not 1 (a crash). Text mode starts a line after the terminal's "^C", as click does.
        if not json_logs:
            click.echo(err=True)
        _fail(json_logs, INTERRUPTED_EXIT, "interrupted", "interrupted", "KeyboardInterrupt")
    except click.exceptions.Abort:
        # The same, arriving while click parses the command line (it wrote the newline).
        _fail(json_logs, INTERRUPTED_EXIT, "interrupted", "interrupted", "KeyboardInterrupt")
    except JaxTraderError as e:
        if debug:
            _traceback_exit(2)  # --debug adds the traceback; the exit code stays the input's 2
        _fail(json_logs, 2, "error", str(e), type(e).__name__)
    except OSError as e:
        # A path the user named that cannot be used (a directory where a file goes, a file in
        # the way of a folder, no permission): theirs to fix, not a bug to report.
        if e.filename is None:
            _internal_error(e, debug, json_logs)
        if debug:
            _traceback_exit(2)
        message = f"cannot use {e.filename}: {path_problem(e)}"
        _fail(json_logs, 2, "error", message, type(e).__name__)
    except Exception as e:
        _internal_error(e, debug, json_logs)


def _traceback_exit(exit_code: int) -> NoReturn:
    """--debug on an error in the user's input: the full traceback instead of the one line, with
    the same exit code (a raise would make it 1, the code of an internal error)."""
    import traceback

    traceback.print_exc()
    sys.exit(exit_code)


def _internal_error(e: Exception, debug: bool, json_logs: bool) -> NoReturn:
    if debug:
        raise e
    message = (
        f"internal error ({type(e).__name__}: {e}); rerun with --debug for the traceback and "
        "please report it"
    )
    _fail(json_logs, 1, "internal_error", message, type(e).__name__)
