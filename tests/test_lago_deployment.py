"""lago/: every verb runs the right docker compose command, in the right directory, with the
configuration's environment; states map correctly; errors are clear. A fake `docker` on PATH
records what it was asked and prints canned `ps` output."""

from __future__ import annotations

import base64
import json
import stat
import sys

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from api.cli import main
from lago.config import LagoConfig
from lago.deployment import (
    CommandTimedOut,
    ComposeCommandFailed,
    ComposeFileMissing,
    DockerNotFound,
    LagoDeployment,
    parse_ps,
    service_state,
)

FAKE_DOCKER = """#!{python}
import json, os, sys, time
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                          "env": {{k: v for k, v in os.environ.items() if k.startswith(("LAGO_",
                                   "DATABASE_URL", "REDIS_URL", "SECRET_KEY_BASE",
                                   "POSTGRES_"))}}}}) + "\\n")
mode = os.environ.get("FAKE_DOCKER_MODE", "ok")
if mode == "fail":
    sys.stderr.write("Error response from daemon: pull access denied\\n")
    sys.exit(1)
if mode == "slow":
    time.sleep(5)
if "ps" in sys.argv:
    sys.stdout.write(os.environ.get("FAKE_DOCKER_PS", ""))
if "logs" in sys.argv:
    sys.stdout.write("api | started\\n")
"""

PS_LINES = "\n".join(json.dumps(row) for row in [
    {"Service": "api", "State": "running", "Health": "healthy"},
    {"Service": "db", "State": "running", "Health": ""},
    {"Service": "front", "State": "running", "Health": "starting"},
    {"Service": "worker", "State": "exited", "Health": ""},
])
PS_ARRAY = json.dumps([{"Service": "api", "State": "running", "Health": ""},
                       {"Service": "db", "State": "running", "Health": "healthy"}])


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    compose_dir = tmp_path / "lago"
    compose_dir.mkdir()
    (compose_dir / "docker-compose.yml").write_text("services: {}\n")

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() \
            else []

    return compose_dir, calls


@pytest.fixture(scope="module")
def config() -> LagoConfig:
    return LagoConfig.generate("http://lago.local:3000", "http://lago.local")


def test_every_verb_runs_the_right_command_in_the_directory_with_the_environment(
    fake_docker, config, monkeypatch
):
    compose_dir, calls = fake_docker
    monkeypatch.setenv("FAKE_DOCKER_PS", PS_LINES)
    deployment = LagoDeployment(compose_dir, config)
    deployment.up()
    deployment.down()
    deployment.restart()
    deployment.pull()
    deployment.status()
    assert "api | started" in deployment.logs("api", tail=50)
    argvs = [call["argv"] for call in calls()]
    assert argvs == [
        ["compose", "up", "-d"], ["compose", "down"], ["compose", "restart"],
        ["compose", "pull"], ["compose", "ps", "--all", "--format", "json"],
        ["compose", "logs", "--no-color", "--tail", "50", "api"],
    ]
    for call in calls():
        assert call["cwd"] == str(compose_dir)
        assert call["env"]["LAGO_API_URL"] == "http://lago.local:3000"
        assert call["env"]["LAGO_FRONT_URL"] == "http://lago.local"
        assert call["env"]["SECRET_KEY_BASE"] == config.secret_key_base
        assert call["env"]["DATABASE_URL"] == config.database_url
        assert call["env"]["LAGO_DISABLE_SIGNUP"] == "true"
        for name in ("LAGO_RSA_PRIVATE_KEY", "LAGO_ENCRYPTION_PRIMARY_KEY",
                     "LAGO_ENCRYPTION_DETERMINISTIC_KEY",
                     "LAGO_ENCRYPTION_KEY_DERIVATION_SALT", "LAGO_API_KEY", "REDIS_URL"):
            assert call["env"][name]


def test_states_map_from_both_ps_output_shapes(fake_docker, config, monkeypatch):
    compose_dir, _ = fake_docker
    monkeypatch.setenv("FAKE_DOCKER_PS", PS_LINES)
    status = LagoDeployment(compose_dir, config).status()
    assert [(s.name, s.state) for s in status.services] == [
        ("api", "running"), ("db", "running"), ("front", "starting"), ("worker", "stopped")]
    assert not status.running
    assert parse_ps(PS_ARRAY).running
    assert parse_ps("").running is False
    assert service_state("restarting", "") == "starting"
    assert service_state("running", "unhealthy") == "starting"
    assert service_state("dead", "") == "stopped"
    assert service_state("weird", "") == "unknown"
    with pytest.raises(ComposeCommandFailed):
        parse_ps("{not json")


def test_errors_are_clear(fake_docker, config, monkeypatch, tmp_path):
    compose_dir, _ = fake_docker
    deployment = LagoDeployment(compose_dir, config)
    monkeypatch.setenv("FAKE_DOCKER_MODE", "fail")
    with pytest.raises(ComposeCommandFailed, match="pull access denied") as failed:
        deployment.pull()
    assert "exited 1" in str(failed.value)
    assert config.secret_key_base not in str(failed.value)
    monkeypatch.setenv("FAKE_DOCKER_MODE", "slow")
    with pytest.raises(CommandTimedOut):
        deployment.up(timeout_s=0.5)
    with pytest.raises(ComposeFileMissing):
        LagoDeployment(tmp_path, config).up()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DockerNotFound):
        deployment.up()


def test_secrets_are_generated_once_kept_private_and_never_shown(tmp_path, config):
    path = tmp_path / "lago.env"
    first = LagoConfig.load_or_generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert LagoConfig.load_or_generate(path) == first
    pem = base64.b64decode(first.rsa_private_key_b64)
    key = serialization.load_pem_private_key(pem, password=None)
    assert key.key_size == 2048
    assert first.secret_key_base not in repr(first)
    assert first.postgres_password not in repr(first)
    assert first.rsa_private_key_b64[:40] not in repr(first)
    assert LagoConfig.generate().secret_key_base != first.secret_key_base


def test_the_cli_verbs_and_exit_codes(fake_docker, monkeypatch):
    compose_dir, calls = fake_docker
    runner = CliRunner()
    up = runner.invoke(main, ["lago", "up", "--dir", str(compose_dir)])
    assert up.exit_code == 0, up.output
    assert (compose_dir / ".zbilling-lago.env").exists()
    monkeypatch.setenv("FAKE_DOCKER_PS", PS_ARRAY)
    assert runner.invoke(main, ["lago", "status", "--dir", str(compose_dir)]).exit_code == 0
    monkeypatch.setenv("FAKE_DOCKER_PS", PS_LINES)
    partial = runner.invoke(main, ["lago", "status", "--dir", str(compose_dir)])
    assert partial.exit_code == 1
    assert "worker" in partial.output
    for verb in ("down", "restart", "pull"):
        assert runner.invoke(main, ["lago", verb, "--dir", str(compose_dir)]).exit_code == 0
    logs = runner.invoke(main, ["lago", "logs", "--dir", str(compose_dir), "--tail", "5"])
    assert "api | started" in logs.output
    monkeypatch.setenv("FAKE_DOCKER_MODE", "fail")
    failed = runner.invoke(main, ["lago", "up", "--dir", str(compose_dir)])
    assert failed.exit_code == 2
    # The same secrets were used by every call.
    keys = {call["env"]["SECRET_KEY_BASE"] for call in calls()}
    assert len(keys) == 1
