"""The `kt-pipeline` command line: one subcommand per module in `kt_pipeline.commands`.

Each command module defines ``NAME``, ``HELP``, ``EXAMPLES`` (text shown at the end of
``--help``), ``add_arguments(parser)`` and ``run(args) -> int``. Command modules import
TensorFlow inside ``run`` so that ``kt-pipeline --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kt_pipeline.errors import KtError

# Order shown in --help.
COMMANDS = [
    "demo",
    "build_tfrecords",
    "train",
    "evaluate",
    "export",
    "predict",
    "tune",
    "cluster",
]


def _load_commands():
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"kt_pipeline.commands.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"kt_pipeline.commands.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kt-pipeline",
        description=(
            "Fine-tune BERT-family text encoders with Keras 3 / TensorFlow, search "
            "hyperparameters with keras-tuner, and export SavedModels that take raw strings."
        ),
        epilog="Run `kt-pipeline COMMAND --help` for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=mod.HELP,
            epilog="examples:\n" + mod.EXAMPLES.strip("\n"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe devices with its C++ start-up chatter filtered.

    TF 2.21 logs oneDNN/CUDA notices through absl before TF_CPP_MIN_LOG_LEVEL applies;
    they go straight to file descriptor 2. We capture that descriptor while importing,
    then replay whatever is not such a notice. Set KT_TF_VERBOSE=1 to see everything.
    """
    if os.environ.get("KT_TF_VERBOSE") or "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line and not line.startswith(_NOISE) and "rebuild TensorFlow" not in line:
                    print(line, file=sys.stderr)


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    import_tensorflow_quietly()
    try:
        return int(args._run(args) or 0)
    except KtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
