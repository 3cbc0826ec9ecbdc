"""`zbilling lago up|down|restart|pull|status|logs`: the Lago deployment verbs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lago.config import LagoConfig, LagoConfigError
from lago.deployment import LagoDeployment, LagoDeploymentError

DEFAULT_DIR = "./lago"
ENV_FILE_NAME = ".zbilling-lago.env"
EXIT_ERROR = 2


def _deployment(directory: Path, env_file: Path | None) -> LagoDeployment:
    try:
        config = LagoConfig.load_or_generate(env_file or directory / ENV_FILE_NAME)
    except (LagoConfigError, OSError) as error:
        raise click.ClickException(str(error)) from None
    return LagoDeployment(directory, config)


def _run(action: str, directory: Path, env_file: Path | None) -> LagoDeployment:
    deployment = _deployment(directory, env_file)
    try:
        getattr(deployment, action)()
    except LagoDeploymentError as error:
        click.echo(f"zbilling lago: {error}", err=True)
        sys.exit(EXIT_ERROR)
    return deployment


directory_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("ZBILLING_LAGO_DIR", DEFAULT_DIR),
    show_default="ZBILLING_LAGO_DIR or ./lago", help="Directory with Lago's compose file.")
env_file_option = click.option(
    "--env-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help=f"Saved configuration (default <dir>/{ENV_FILE_NAME}); generated on first use.")


@click.group()
def deployment() -> None:
    """Run a self-hosted Lago with Docker Compose."""


def _simple(action: str, help_text: str) -> None:
    @deployment.command(action, help=help_text)
    @directory_option
    @env_file_option
    def command(directory: Path, env_file: Path | None) -> None:
        _run(action, directory, env_file)
        click.echo(f"lago {action}: done")


_simple("up", "Start Lago (docker compose up -d).")
_simple("down", "Stop Lago (docker compose down).")
_simple("restart", "Restart Lago's services.")
_simple("pull", "Pull Lago's images.")


@deployment.command()
@directory_option
@env_file_option
def status(directory: Path, env_file: Path | None) -> None:
    """Service states; exit 1 unless every service runs."""
    target = _deployment(directory, env_file)
    try:
        current = target.status()
    except LagoDeploymentError as error:
        click.echo(f"zbilling lago: {error}", err=True)
        sys.exit(EXIT_ERROR)
    for service in current.services:
        click.echo(f"{service.name:<20} {service.state:<9} {service.health}")
    click.echo("all running" if current.running else "not all running")
    if not current.running:
        sys.exit(1)


@deployment.command()
@directory_option
@env_file_option
@click.option("--service", default=None, help="One service only.")
@click.option("--tail", type=click.IntRange(1, 10_000), default=100, show_default=True)
def logs(directory: Path, env_file: Path | None, service: str | None, tail: int) -> None:
    """The last lines of the services' logs."""
    target = _deployment(directory, env_file)
    try:
        click.echo(target.logs(service, tail), nl=False)
    except LagoDeploymentError as error:
        click.echo(f"zbilling lago: {error}", err=True)
        sys.exit(EXIT_ERROR)
