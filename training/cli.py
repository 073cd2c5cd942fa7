"""The ``timbral`` command: generate, train, tune, promote, rollback, import-model, stack, demo.

Every command has ``--help``, defaults that work on the embedded stack, a progress display for long steps, and
on failure exits non-zero with a one-line reason (set TIMBRAL_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import os
import sys
from dataclasses import fields

import click

from timbral.confidence import SCHEMES as CONFIDENCES
from timbral.params import BETA_LOSSES, INITS, SOLVERS, NMFParams
from timbral.weighting import SCHEMES

DEFAULTS = NMFParams()


def _fail(exc: BaseException) -> None:
    if os.environ.get("TIMBRAL_DEBUG"):
        raise exc
    message = " ".join(str(exc).split()) or type(exc).__name__
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


class Group(click.Group):
    """Turns any exception into a one-line error and exit code 1; SIGTERM stops like Ctrl-C (exit code 143)."""

    def invoke(self, ctx):
        from training.local_stack import Terminated, sigterm_unwinds

        try:
            with sigterm_unwinds():  # servers started in ``with`` blocks (stack, demo) stop on SIGTERM too
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(143)
        except Exception as exc:  # noqa: BLE001
            _fail(exc)

    # commands whose modules are imported only when asked for (the serving side's import-model pulls BentoML)
    LAZY = {
        "import-model": ("service.importer", "import_model_command"),
        "backup": ("training.backup", "backup_command"),
        "restore": ("training.backup", "restore_command"),
    }

    def get_command(self, ctx, name):
        if name in self.LAZY:
            import importlib

            module, attr = self.LAZY[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.LAZY])


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="timbral")
def main() -> None:
    """Timbral: music recommendations from listening history (NMF), tracked in MLflow, served by BentoML."""
    # our own progress display replaces MLflow's INFO lines and per-file download bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def data_options(f):
    opts = [
        click.option("--data", required=True, help="CSV/Parquet/TSV file, or an SQLAlchemy URL (with --table)."),
        click.option("--format", "fmt", default="auto", show_default=True,
                     help="csv, parquet, sql, movielens-100k, movielens-1m, movielens-csv, lastfm-2k, lastfm-360k, lastfm-1k, or auto (detect)."),
        click.option("--table", default=None, help="Table to read when --data is an SQL URL."),
        click.option("--user-col", default="user_id", show_default=True),
        click.option("--item-col", default="item_id", show_default=True),
        click.option("--value-col", default="value", show_default=True, help="Optional in the data: 1 per row when absent."),
        click.option("--time-col", default="timestamp", show_default=True, help="Optional: enables the temporal split."),
        click.option("--min-user-interactions", default=1, show_default=True, type=click.IntRange(min=1)),
        click.option("--min-item-interactions", default=1, show_default=True, type=click.IntRange(min=1)),
        click.option("--experiment", default="timbral", show_default=True, help="MLflow experiment."),
        click.option("--model-name", default="timbral-nmf", show_default=True, help="Registered model name."),
        click.option("--test-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Share of each user's items held out (latest ones when timestamps exist)."),
        click.option("--k", "ks", default="5,10,20", show_default=True, help="Cut-offs for the ranking metrics."),
        click.option("--eval-max-users", default=20000, show_default=True, type=click.IntRange(min=1),
                     help="Evaluate on a seeded sample of at most this many test users."),
        click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI", help="MLflow tracking server [env MLFLOW_TRACKING_URI]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def model_options(f):
    opts = [
        click.option("--components", default=DEFAULTS.n_components, show_default=True, type=click.IntRange(min=1)),
        click.option("--weighting", default=DEFAULTS.weighting, show_default=True, type=click.Choice(SCHEMES)),
        click.option("--init", default=DEFAULTS.init, show_default=True, type=click.Choice(INITS)),
        click.option("--solver", default=DEFAULTS.solver, show_default=True, type=click.Choice(SOLVERS)),
        click.option("--beta-loss", default=DEFAULTS.beta_loss, show_default=True, type=click.Choice(BETA_LOSSES)),
        click.option("--alpha-w", default=DEFAULTS.alpha_W, show_default=True, type=click.FloatRange(min=0)),
        click.option("--alpha-h", default=str(DEFAULTS.alpha_H), show_default=True, help="A number >= 0, or 'same' (= alpha-w)."),
        click.option("--l1-ratio", default=DEFAULTS.l1_ratio, show_default=True, type=click.FloatRange(0, 1)),
        click.option("--max-iter", default=DEFAULTS.max_iter, show_default=True, type=click.IntRange(min=1)),
        click.option("--tol", default=DEFAULTS.tol, show_default=True, type=click.FloatRange(min=0)),
        click.option("--seed", default=DEFAULTS.random_state, show_default=True, type=int, help="NMF random_state."),
        click.option("--confidence", default=DEFAULTS.confidence, show_default=True, type=click.Choice(CONFIDENCES),
                     help="After the NMF fit, refine the factors weighting each listen by 1 + alpha * its item's idf "
                          "(zeros weigh 1), as implicit-feedback ALS does; 'none' keeps plain NMF."),
        click.option("--confidence-alpha", default=DEFAULTS.confidence_alpha, show_default=True, type=click.FloatRange(min=0)),
        click.option("--confidence-reg", default=str(DEFAULTS.confidence_reg), show_default=True,
                     help="The refinement's L2 penalty: a number >= 0, or 'auto' (0.7 * sqrt(users))."),
        click.option("--confidence-sweeps", default=DEFAULTS.confidence_sweeps, show_default=True, type=click.IntRange(min=1)),
        click.option("--confidence-shift", default=DEFAULTS.confidence_shift, show_default=True,
                     type=click.FloatRange(min=0, max=1e6),
                     help="Raise every cell's target by this in the refinement, so a zero sits above the factors' "
                          "floor and they can say 'less than usual' (0 turns it off; see the README). Scores then "
                          "estimate value + shift."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _params(kw: dict) -> NMFParams:
    alpha_h = kw.pop("alpha_h")
    try:
        alpha_h = alpha_h if alpha_h == "same" else float(alpha_h)
    except ValueError:
        raise click.BadParameter("must be a number or 'same'", param_hint="--alpha-h") from None
    reg = kw.pop("confidence_reg")
    try:
        reg = reg if reg == "auto" else float(reg)
    except ValueError:
        raise click.BadParameter("must be a number or 'auto'", param_hint="--confidence-reg") from None
    return NMFParams(
        n_components=kw.pop("components"), weighting=kw.pop("weighting"), init=kw.pop("init"),
        solver=kw.pop("solver"), beta_loss=kw.pop("beta_loss"), alpha_W=kw.pop("alpha_w"), alpha_H=alpha_h,
        l1_ratio=kw.pop("l1_ratio"), max_iter=kw.pop("max_iter"), tol=kw.pop("tol"), random_state=kw.pop("seed"),
        confidence=kw.pop("confidence"), confidence_alpha=kw.pop("confidence_alpha"), confidence_reg=reg,
        confidence_sweeps=kw.pop("confidence_sweeps"), confidence_shift=kw.pop("confidence_shift"),
    ).validate()


def _config(kw: dict, params: NMFParams, **extra):
    from training.pipeline import TrainConfig
    from training.readers import ColumnNames

    try:
        ks = tuple(int(x) for x in kw.pop("ks").split(",") if x.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, e.g. 5,10,20", param_hint="--k") from None
    if not ks or min(ks) < 1:
        raise click.BadParameter("cut-offs must be integers >= 1", param_hint="--k")
    tracking_uri = kw.pop("tracking_uri")
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    columns = ColumnNames(kw.pop("user_col"), kw.pop("item_col"), kw.pop("value_col"), kw.pop("time_col"))
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(columns=columns, params=params, ks=ks, **{k: v for k, v in {**kw, **extra}.items() if k in names})


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output file: .parquet or .csv.")
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(min=1))
@click.option("--items", default=50_000, show_default=True, type=click.IntRange(min=1))
@click.option("--interactions", default=1_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=7, show_default=True, type=int)
def generate(out, users, items, interactions, seed):
    """Write realistic synthetic listening data (seeded, deterministic, streamed in chunks)."""
    from training.generate import write_listens
    from training.progress import ConsoleReporter

    with ConsoleReporter().stage(f"Generating {interactions:,} listens", total=interactions):
        path = write_listens(out, users, items, interactions, seed)
    click.echo(f"wrote {interactions:,} interactions ({users:,} users, {items:,} items) to {path}")


@main.command()
@data_options
@model_options
@click.option("--promote", default="auto", show_default=True, type=click.Choice(["auto", "always", "never"]),
              help="auto: champion only if the gate metric is at least the champion's (+ margin).")
@click.option("--gate-metric", default="ndcg_at_10", show_default=True)
@click.option("--gate-margin", default=0.0, show_default=True, type=float)
@click.option("--no-refit", is_flag=True, help="Keep the model fit on the training split (default: refit on all data).")
@click.option("--no-register", is_flag=True, help="Log the run and model but do not register a version.")
@click.option("--run-name", default=None, help="MLflow run name (default: generated).")
def train(**kw):
    """Fit NMF, evaluate against popularity, log the run to MLflow and register the model."""
    from training.pipeline import run_training
    from training.progress import ConsoleReporter
    from training.report import print_result

    params = _params(kw)
    refit, register = not kw.pop("no_refit"), not kw.pop("no_register")
    cfg = _config(kw, params, refit=refit, register=register)
    print_result(run_training(cfg, ConsoleReporter()))


@main.command()
@data_options
@click.option("--trials", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the search.")
@click.option("--search", default="neighbours", show_default=True, type=click.Choice(["neighbours", "random"]),
              help="neighbours: each trial moves one knob of the best trial so far; random: every knob drawn.")
@click.option("--max-iter", default=DEFAULTS.max_iter, show_default=True, type=click.IntRange(min=1))
@click.option("--promote", default="auto", show_default=True, type=click.Choice(["auto", "always", "never"]))
def tune(**kw):
    """Search the model knobs as nested MLflow runs; the best child is refit and registered."""
    from training.progress import ConsoleReporter
    from training.report import print_result
    from training.tune import run_tuning

    trials, seed, max_iter, search = kw.pop("trials"), kw.pop("seed"), kw.pop("max_iter"), kw.pop("search")
    cfg = _config(kw, NMFParams(max_iter=max_iter))
    print_result(run_tuning(cfg, trials=trials, seed=seed, progress=ConsoleReporter(), search=search))


@main.command()
@click.option("--model-name", default="timbral-nmf", show_default=True)
@click.option("--version", "version", required=True, help="Registered version to make champion.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI")
def promote(model_name, version, tracking_uri):
    """Move the alias "champion" to a version (the previous champion is kept for rollback)."""
    from mlflow import MlflowClient

    from training import registry

    client = MlflowClient(tracking_uri)
    registry.check_model(client, model_name)
    with registry.promotion_lock(client, model_name):
        previous = registry.promote(client, model_name, version)
    click.echo(f"{model_name}: champion v{previous or '-'} -> v{version}")


@main.command()
@click.option("--model-name", default="timbral-nmf", show_default=True)
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI")
def rollback(model_name, tracking_uri):
    """Move "champion" back to the previous champion."""
    from mlflow import MlflowClient

    from training import registry

    client = MlflowClient(tracking_uri)
    registry.check_model(client, model_name)
    with registry.promotion_lock(client, model_name):
        old, new = registry.rollback(client, model_name)
    click.echo(f"{model_name}: champion v{old} -> v{new} (rolled back)")


@main.command()
@click.option("--workdir", default=".timbral/stack", show_default=True, type=click.Path(file_okay=False))
def stack(workdir):
    """Run the embedded stack (moto S3 + MLflow server) in the foreground until Ctrl-C or SIGTERM."""
    import shutil
    import time

    from training.local_stack import LocalStack

    shutil.rmtree(workdir, ignore_errors=True)  # moto keeps S3 in memory: start the registry fresh with it
    with LocalStack(workdir) as s:
        click.echo(f"MLflow UI and tracking: {s.tracking_uri}\nS3 endpoint (moto):     {s.s3_endpoint}\n")
        click.echo("In another shell:")
        for key, value in s.client_env().items():
            click.echo(f"  export {key}={value}")
        click.echo("\nCtrl-C (or SIGTERM) stops both servers (their state is in memory/this workdir only).")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopping")


@main.command()
@click.option("--workdir", default=".timbral/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--users", default=5_000, show_default=True, type=click.IntRange(min=10))
@click.option("--items", default=20_000, show_default=True, type=click.IntRange(min=10))
@click.option("--interactions", default=300_000, show_default=True, type=click.IntRange(min=100))
@click.option("--serve/--no-serve", default=True, show_default=True, help="Also import, build the bento, serve it and query it.")
@click.option("--keep-running", is_flag=True, help="Leave the MLflow UI (and the service) up until Ctrl-C.")
def demo(**kw):
    """End to end on embedded defaults: local S3 + MLflow, synthetic data, train, register, serve, answer."""
    from training.demo import run_demo

    run_demo(**kw)


if __name__ == "__main__":
    main()
