"""Command line: ``python -m lightning_genmodels {fit,validate,test,predict} --config ...``.

LightningCLI in subclass mode: ``--model`` takes any LightningModule (ours by short name, e.g.
``GaussianMixture``, or a user's subclass by import path ``my_pkg.MyGMM``), ``--data`` any
LightningDataModule (default ``MNISTDataModule``). This is the only place where objects are
assembled from configuration.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_genmodels  # noqa: F401  (registers our classes for short names)
from lightning_genmodels.predictions import PredictionWriter


# Trainer options where an int and a float mean different things (1: one batch; 1.0: all of them).
# jsonargparse reads ``Union[int, float]`` values as floats, from the command line and from YAML.
INT_OR_FLOAT = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "overfit_batches", "val_check_interval")


SUBCOMMANDS = ("fit", "validate", "test", "predict")


def config_trainer_options(value: str, whole: bool, subcommand: str | None = None) -> dict[str, Any]:
    """The trainer options of a config given as a file or as YAML/JSON text: its ``trainer``
    section and, in a config given before the subcommand, that subcommand's (``fit: trainer:``),
    or all of it (``whole``: the value of ``--trainer``)."""
    try:
        text = Path(value).read_text() if Path(value).is_file() else value
    except (OSError, ValueError):  # text too long for a path, or with a NUL
        text = value
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    if whole:
        return config if isinstance(config, dict) else {}
    if not isinstance(config, dict):
        return {}
    nested = config.get(subcommand) if subcommand else None
    found: dict[str, Any] = {}
    for section in (config.get("trainer"), nested.get("trainer") if isinstance(nested, dict) else None):
        found.update(section if isinstance(section, dict) else {})
    return found


def integer_trainer_options(argv: list[str]) -> dict[str, int]:
    """The :data:`INT_OR_FLOAT` options written as integers in ``argv`` or in its ``--config``
    and ``--trainer`` configs, the last one given winning, as the parser takes them."""
    found: dict[str, int] = {}
    subcommand = next((token for token in argv if token in SUBCOMMANDS), None)
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if name in ("--config", "-c", "--trainer"):
            for key, v in config_trainer_options(value, name == "--trainer", subcommand).items():
                if key in INT_OR_FLOAT and type(v) is int:
                    found[key] = v
                elif key in INT_OR_FLOAT:
                    found.pop(key, None)
        elif name.startswith("--trainer.") and name[10:] in INT_OR_FLOAT:
            if re.fullmatch(r"[+-]?\d+", value.strip()):
                found[name[10:]] = int(value)
            else:
                found.pop(name[10:], None)
    return found


def constructor_error(report: str) -> str | None:
    """``Class: message`` from jsonargparse's "Does not validate against any of the Union
    subtypes" report of a constructor that raised (its other entries only say the value is not
    None); None for any other text."""
    lines = report.splitlines()
    if "Errors:" not in lines:
        return None
    reasons = []
    for line in lines[lines.index("Errors:") + 1:]:
        if line.startswith("  - "):
            reasons.append(line[4:])
        elif line.startswith("    ") and reasons:
            reasons[-1] += " " + line.strip()
        else:
            break
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    # a list of callbacks fails the single-Callback subtype too: that entry only lists the forms
    reasons = [r for r in reasons if not r.startswith("Not a valid subclass of")] or reasons
    if not reasons:
        return None
    found = re.search(r"class_path='([^']+)'", report)
    return (f"{found.group(1)}: " if found else "") + "; ".join(reasons)


def with_integer_options(text: str, ints: dict[str, int]) -> str:
    """YAML ``text`` of a config whose trainer options named in ``ints`` are written as those ints."""
    lines, in_trainer = text.splitlines(keepends=True), False
    for i, line in enumerate(lines):
        name = line.split(":")[0].strip()
        if not line.startswith((" ", "#")):
            in_trainer = name == "trainer"
        elif in_trainer and re.match(r"  \w", line) and name in ints:  # the trainer's own options
            lines[i] = f"  {name}: {ints[name]}\n"
    return "".join(lines)


class IntegerLimitsParser(LightningArgumentParser):
    """LightningArgumentParser whose YAML dumps (``--print_config``, the saved config.yaml) keep
    the :data:`INT_OR_FLOAT` options given as integers (``int_options``) as ints: its dump of
    Trainer's ``Union[int, float]`` writes 1 as 1.0, and a run from that file took every batch
    instead of one."""

    int_options: dict[str, int] = {}

    def dump(self, cfg: Any, *args: Any, **kwargs: Any) -> str:
        text = super().dump(cfg, *args, **kwargs)
        if kwargs.get("format", args[0] if args else "parser_mode") not in ("parser_mode", "yaml"):
            return text
        trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
        ints = {k: v for k, v in self.int_options.items() if trainer is not None and trainer.get(k) == v}
        return with_integer_options(text, ints) if ints else text


class GenModelsCLI(LightningCLI):
    """LightningCLI that prints the final metrics after each subcommand, saves ``predict``'s
    outputs (:class:`PredictionWriter`, unless the config names a writer), takes MNISTDataModule
    when ``--data`` is not given, and passes the Trainer's batch limits written as integers as
    ints (``--trainer.limit_val_batches 1``: one batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        argv = kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        if isinstance(argv, dict):  # a structured config, as LightningCLI takes: {"trainer": ...} or {"fit": ...}
            config = argv.get(argv.get("subcommand"), argv)
            trainer = config.get("trainer") if isinstance(config, dict) else None
            trainer = trainer if isinstance(trainer, dict) else {}
            self._int_options = {k: v for k, v in trainer.items() if k in INT_OR_FLOAT and type(v) is int}
        else:
            self._int_options = integer_trainer_options(list(argv)) if isinstance(argv, (list, tuple)) else {}
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        if isinstance(parser, IntegerLimitsParser):
            parser.int_options = self._int_options
        return parser

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as exc:  # a constructor's check, buried in jsonargparse's union report
            reason = constructor_error(str(exc))
            if reason is None:
                raise
            self._usage_error(reason)

    def _usage_error(self, reason: str) -> None:
        """Exit with status 2, the subcommand's usage line and ``reason``."""
        subcommand = getattr(self, "subcommand", None) or self.config.get("subcommand")  # (set after parsing)
        parser, action = self.parser, getattr(self.parser, "_subcommands_action", None)
        if subcommand and action is not None:  # the subcommand's usage line
            parser = action._name_parser_map.get(subcommand, parser)
        parser.error(reason)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's, but a checkpoint's hyperparameters without ``_class_path`` (a model
        built in Python and saved by a Trainer, not by this CLI) are arguments of the class the
        config names: they were parsed against LightningModule, which failed ("Option
        'n_components' is not accepted ... Parsing of ckpt_path hyperparameters failed!"); and a
        file that does not load is a usage error naming it (torch.load's traceback named no file,
        and advised weights_only=False)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return  # (LightningCLI reads nothing either: "last", "best", a missing file)
        try:
            checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        except Exception as exc:  # anything a corrupt or foreign file raises
            text = " ".join(str(exc).split())
            # torch's weights_only boilerplate around the unpickler's own reason
            text = text.partition("WeightsUnpickler error:")[2].partition(" Check the documentation")[0].strip() or text
            self._usage_error(f"--ckpt_path {ckpt_path}: not a checkpoint that loads ({type(exc).__name__}"
                              f"{': ' + text[:300] if text else ''}{' ...' if len(text) > 300 else ''})")
        if not isinstance(checkpoint, dict):
            self._usage_error(f"--ckpt_path {ckpt_path}: not a Lightning checkpoint (it holds a "
                              f"{type(checkpoint).__name__}, not a dict)")
        hparams = checkpoint.get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        model = self.config[subcommand].get("model")
        class_path = hparams.pop("_class_path", getattr(model, "class_path", None))
        if class_path is not None:
            hparams = {"class_path": class_path, "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.set_defaults({"data": {"class_path": "lightning_genmodels.MNISTDataModule"}})

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**{**self._int_options, **kwargs})
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            trainer.callbacks.append(PredictionWriter())  # else the predictions are dropped
        return trainer

    def before_instantiate_classes(self) -> None:
        # in the parsed config too
        config = self.config[self.subcommand] if self.subcommand else self.config
        for name, value in self._int_options.items():
            config[f"trainer.{name}"] = value

    def _print_metrics(self) -> None:
        if not self.trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.trainer.callback_metrics.items() if isinstance(v, torch.Tensor)}
        if not metrics:
            return
        width = max(len(k) for k in metrics)
        print(f"\n{'metric':<{width}}  value")
        for key in sorted(metrics):
            print(f"{key:<{width}}  {metrics[key].item():.6g}")

    def after_fit(self) -> None:
        self._print_metrics()

    def after_validate(self) -> None:
        self._print_metrics()

    def after_test(self) -> None:
        self._print_metrics()

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            for writer in self.trainer.callbacks:
                if isinstance(writer, PredictionWriter) and writer.path:
                    print(f"wrote {writer.path}")


# Notices that a quickstart user cannot act on, silenced by name (nothing else is): Lightning
# 2.6's use of a torch pytree API that torch 2.14 deprecates; jsonargparse's deprecations of
# calls inside LightningCLI; the worker-count hint (on a 2-core machine workers only cost).
QUIET_NOTES = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The '\w+_dataloader' does not have many workers",
    # Lightning 2.6 on any manual-optimisation module (the GAN) whose ModelCheckpoint counts
    # train steps: the checkpoint holds the state after the step, which is what the GAN saves.
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's info logs (accelerator banner, seed, tips) off, and :data:`QUIET_NOTES`."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for note in QUIET_NOTES:
                warnings.filterwarnings("ignore", message=note)
            with contextlib.suppress(ImportError):
                from jsonargparse._deprecated import JsonargparseDeprecationWarning

                warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def main(args: list[str] | dict[str, Any] | None = None, **kwargs: Any) -> GenModelsCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (for tests and notebooks; a dict is a
    structured config, as LightningCLI's ``args`` takes). Prints the
    final metrics and what the callbacks write, and no Lightning chatter (:func:`quiet`)."""
    with quiet():
        options = {"subclass_mode_model": True, "subclass_mode_data": True, "parser_class": IntegerLimitsParser,
                   "save_config_kwargs": {"overwrite": True}}
        return GenModelsCLI(LightningModule, LightningDataModule, args=args, **(options | kwargs))


if __name__ == "__main__":
    main()
