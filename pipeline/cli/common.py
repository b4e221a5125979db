"""What every `lrt-pipeline` command shares: `--config`/`--set` loading (`with_settings`), the
mapping of user mistakes to one-line errors, the MLflow parent run of a command line
(`tracked_invocation`), JSON output and `--variant` checking."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from pipeline.config.settings import DEFAULT_CONFIG, Settings, SettingsError, load_settings


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit status 1."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input", not "bug": shown without a traceback."""
    from pipeline.atomic import OutputLockedError
    from pipeline.data.http import DownloadError

    errors: list[type[BaseException]] = [
        SettingsError,
        FileNotFoundError,
        DownloadError,
        ValueError,
        OutputLockedError,  # another run writes the same folder
        OSError,  # disk full (ENOSPC / EFBIG), permissions: the message names the file
        FloatingPointError,  # training stopped on a non-finite loss (NonFiniteError)
    ]
    with contextlib.suppress(ImportError):  # the extension may not be built yet
        from pipeline.data.shards import ShardFormatError

        errors.append(ShardFormatError)
    return tuple(errors)


def _load(config_path: str | None, overrides: Sequence[str]) -> Settings:
    try:
        return load_settings(config_path, list(overrides))
    except SettingsError as exc:
        raise UserError(str(exc)) from None


def with_settings(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --config/--set to a command and pass it the loaded `Settings` as first argument;
    turn user mistakes into clean one-line errors (--debug shows the traceback)."""

    @click.option(
        "--config",
        "config_path",
        default=DEFAULT_CONFIG,
        show_default=True,
        type=click.Path(dir_okay=False),
        help="YAML settings file (DVC's params.yaml). A missing params.yaml means defaults.",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one setting, e.g. --set train.max_steps=100 (repeatable; YAML values).",
    )
    @functools.wraps(func)
    def wrapper(config_path: str, overrides: tuple[str, ...], **kwargs: Any) -> Any:
        settings = _load(config_path, overrides)
        try:
            return func(settings, **kwargs)
        except click.ClickException:
            raise
        except _user_errors() as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise UserError(f"{type(exc).__name__}: {exc}") from None

    return wrapper


@contextlib.contextmanager
def tracked_invocation(settings: Settings, command: str) -> Any:
    """One MLflow parent run for this command line, whatever stages and variants it runs."""
    from pipeline.tracking import Tracker

    with Tracker(settings.tracking, project_dir=settings.project_dir).pipeline(
        f"lrt-pipeline {command}"
    ):
        yield


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def resolve_variants(settings: Settings, names: Sequence[str]) -> list[str]:
    known = list(settings.train.variants)
    for name in names:
        if name not in known:
            raise UserError(f"unknown variant {name!r}; train.variants has {', '.join(known)}")
    return list(names) or known
