"""Command-line entry point: ``sdcompress MODEL [options]`` runs the whole pipeline;
``sdcompress SUBCOMMAND ...`` runs one stage.

This layer only parses arguments, configures logging and turns the toolkit's typed
errors into one line on stderr and a non-zero exit (tracebacks only with ``--verbose``).

Exit codes: 0 success; 2 bad input, including a bad option (one line and "see --help",
not the usage block) and an output location that cannot be written (permissions,
read-only, full disk); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM, handled like
Ctrl-C: temporary files are removed and the run folder's lock released).
Each subcommand lives in ``sdcompress/cli/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import signal
import sys
from typing import Any, NoReturn, Sequence

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sdcompress.cli.train", "train a model with constant-step SGD to the edge of stability"),
    "estimate": ("sdcompress.cli.estimate", "estimate sharpness exponents, SD and Lyapunov subspaces"),
    "plan": ("sdcompress.cli.plan", "write a compression plan from estimates (nothing is changed)"),
    "compress": ("sdcompress.cli.compress", "apply a plan.json to a model and save the result"),
    "evaluate": ("sdcompress.cli.evaluate", "test loss, gap and SD of a (compressed) model"),
    "recipe": ("sdcompress.cli.recipe", "run a YAML recipe"),
    "report": ("sdcompress.cli.report", "re-render report.md and plots of a finished run folder"),
    "export": ("sdcompress.cli.export", "export a compressed model for plain transformers (dense or remote code)"),
}
PIPELINE_MODULE = "sdcompress.cli.run"
_GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks on errors")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch CPU threads (default: the cores this process may run on, os.sched_getaffinity; "
                       "give each of two jobs sharing a machine half, or 1 for benchmarks)")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count`` where affinity is unknown)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None) -> int:
    """The thread policy: torch uses ``n`` intra-op threads; default ``OMP_NUM_THREADS``
    when set, else the cores this process may run on.

    More threads than cores (torch's default counts every core of the machine, not the
    ones this process may use) oversubscribes; two jobs at full width on one machine were
    measured 10–15× slower than one. Returns the number set.

    Raises:
        ConfigError: ``n`` < 1.
    """
    import os

    import torch

    from sdcompress.errors import ConfigError

    if n is not None and n < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {n}")
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else available_cores()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)  # the toolkit runs no parallel graph branches
    except RuntimeError:  # already set, or parallel work has started
        pass
    return n


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no 12-line usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, str]:
    """The parser for this command line and which module runs it."""
    first = argv[0] if argv else ""
    if first in SUBCOMMANDS:
        module, help_ = SUBCOMMANDS[first]
        parser = _Parser(
            prog=f"sdcompress {first}", description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
    else:
        module = PIPELINE_MODULE
        epilog = "subcommands:\n" + "\n".join(f"  {k:<10} {v[1]}" for k, v in SUBCOMMANDS.items())
        epilog += "\n\nrun 'sdcompress SUBCOMMAND --help' for each one's options."
        parser = _Parser(
            prog="sdcompress",
            description="Estimate the Sharpness Dimension of a model at the edge of stability, compress it "
            "guided by SD, and verify that generalization is preserved.",
            epilog=epilog,
            formatter_class=lambda prog: _Formatter(prog, max_help_position=32),
        )
    _add_common(parser)
    importlib.import_module(module).add_arguments(parser)
    return parser, module


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


#: OS errors a user causes through where output goes (exit 2 with one line, like bad input)
_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                   errno.ENAMETOOLONG}


def _on_sigterm(signum: int, frame: Any) -> None:
    from sdcompress.errors import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success)."""
    previous = None
    try:  # SIGTERM (kill, a batch scheduler's time limit) unwinds like Ctrl-C: clean-up runs
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        pass
    from sdcompress.errors import Terminated

    try:
        return _main(argv)
    except Terminated:
        print("sdcompress: terminated (SIGTERM); temporary files removed; rerun the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("sdcompress: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    from sdcompress.errors import SdcompressError

    argv = list(sys.argv[1:] if argv is None else argv)
    # global flags may come before a subcommand: `sdcompress -q recipe FILE`
    lead = 0
    while lead < len(argv) and argv[lead] in _GLOBAL_FLAGS:
        lead += 1
    if 0 < lead < len(argv) and argv[lead] in SUBCOMMANDS:
        argv = argv[lead:] + argv[:lead]
    args_for_parser = argv[1:] if argv and argv[0] in SUBCOMMANDS else argv
    parser, module = build_parser(argv)
    args = parser.parse_args(args_for_parser)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s")
    # basicConfig does nothing when the root logger already has handlers (an embedding
    # application, a second in-process call): the toolkit's own logger takes -q/-v directly
    lib_logger = logging.getLogger("sdcompress")
    previous_level = lib_logger.level
    lib_logger.setLevel(level)
    try:  # transformers' own "Loading weights" bars: our stages show their own progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    for noisy in ("transformers", "datasets", "accelerate", "matplotlib", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not args.verbose else logging.WARNING)
    previous_threads = torch_threads()
    try:
        threads = set_threads(getattr(args, "threads", None))
        logging.getLogger(__name__).debug("torch threads: %d", threads)
        return int(importlib.import_module(module).run(args) or 0)
    except SdcompressError as exc:
        if args.verbose:
            raise
        print(f"sdcompress: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.verbose or exc.errno not in _USER_OS_ERRORS:
            raise
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"sdcompress: error: {exc.strerror}:{where}; check the path, its permissions and the free space",
              file=sys.stderr)
        return 2
    finally:  # an in-process caller (tests, notebooks) gets its own settings back
        import torch

        torch.set_num_threads(previous_threads)
        lib_logger.setLevel(previous_level)


def torch_threads() -> int:
    """torch's intra-op threads now."""
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
