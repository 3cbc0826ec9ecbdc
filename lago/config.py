"""`LagoConfig`: the environment a self-hosted Lago's Docker Compose file reads, with the
secrets it needs generated once and kept in an env file (mode 0600).

Variable names follow Lago's docker-compose.yml (getlago/lago): LAGO_API_URL, LAGO_FRONT_URL,
DATABASE_URL, REDIS_URL, SECRET_KEY_BASE, LAGO_RSA_PRIVATE_KEY (a base64-encoded PEM, as in
Lago's docs: `openssl genrsa 2048 | base64`), LAGO_ENCRYPTION_PRIMARY_KEY,
LAGO_ENCRYPTION_DETERMINISTIC_KEY, LAGO_ENCRYPTION_KEY_DERIVATION_SALT, POSTGRES_*.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass, fields
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

RSA_KEY_BITS = 2048
SECRET_KEY_BASE_BYTES = 64
ENCRYPTION_KEY_BYTES = 32
ENV_FILE_MODE = 0o600
_SECRET_FIELDS = frozenset({"postgres_password", "secret_key_base", "rsa_private_key_b64",
                            "encryption_primary_key", "encryption_deterministic_key",
                            "encryption_key_derivation_salt", "api_key"})


class LagoConfigError(ValueError):
    pass


@dataclass(frozen=True)
class LagoConfig:
    api_url: str
    front_url: str
    postgres_user: str
    postgres_password: str
    postgres_db: str
    postgres_host: str
    redis_url: str
    secret_key_base: str
    rsa_private_key_b64: str
    encryption_primary_key: str
    encryption_deterministic_key: str
    encryption_key_derivation_salt: str
    api_key: str
    disable_signup: bool = True

    @classmethod
    def generate(
        cls,
        api_url: str = "http://localhost:3000",
        front_url: str = "http://localhost",
        *,
        disable_signup: bool = True,
    ) -> LagoConfig:
        """A configuration with fresh secrets (RSA key, Rails secret, encryption keys)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        return cls(
            api_url=api_url,
            front_url=front_url,
            postgres_user="lago",
            postgres_password=secrets.token_hex(16),
            postgres_db="lago",
            postgres_host="db",
            redis_url="redis://redis:6379",
            secret_key_base=secrets.token_hex(SECRET_KEY_BASE_BYTES),
            rsa_private_key_b64=base64.b64encode(pem).decode(),
            encryption_primary_key=secrets.token_hex(ENCRYPTION_KEY_BYTES),
            encryption_deterministic_key=secrets.token_hex(ENCRYPTION_KEY_BYTES),
            encryption_key_derivation_salt=secrets.token_hex(ENCRYPTION_KEY_BYTES),
            api_key=secrets.token_urlsafe(32),
            disable_signup=disable_signup,
        )

    @property
    def database_url(self) -> str:
        return (f"postgresql://{self.postgres_user}:{self.postgres_password}@"
                f"{self.postgres_host}:5432/{self.postgres_db}")

    def environment(self) -> dict[str, str]:
        """Every variable the compose file reads."""
        return {
            "LAGO_API_URL": self.api_url,
            "LAGO_FRONT_URL": self.front_url,
            "POSTGRES_USER": self.postgres_user,
            "POSTGRES_PASSWORD": self.postgres_password,
            "POSTGRES_DB": self.postgres_db,
            "POSTGRES_HOST": self.postgres_host,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SECRET_KEY_BASE": self.secret_key_base,
            "LAGO_RSA_PRIVATE_KEY": self.rsa_private_key_b64,
            "LAGO_ENCRYPTION_PRIMARY_KEY": self.encryption_primary_key,
            "LAGO_ENCRYPTION_DETERMINISTIC_KEY": self.encryption_deterministic_key,
            "LAGO_ENCRYPTION_KEY_DERIVATION_SALT": self.encryption_key_derivation_salt,
            "LAGO_API_KEY": self.api_key,
            "LAGO_DISABLE_SIGNUP": "true" if self.disable_signup else "false",
        }

    def save(self, path: Path) -> None:
        """Write the env file readable by its owner only (it holds secrets)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ENV_FILE_MODE)
        with os.fdopen(descriptor, "w") as handle:
            for field in fields(self):
                handle.write(f"{field.name}={getattr(self, field.name)}\n")
        os.chmod(path, ENV_FILE_MODE)

    @classmethod
    def load(cls, path: Path) -> LagoConfig:
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            name, separator, value = line.partition("=")
            if separator:
                values[name.strip()] = value.strip()
        missing = [field.name for field in fields(cls) if field.name not in values]
        if missing:
            raise LagoConfigError(f"{path} lacks {', '.join(missing)}")
        return cls(**{
            field.name: values[field.name] == "True" if field.name == "disable_signup"
            else values[field.name]
            for field in fields(cls)
        })

    @classmethod
    def load_or_generate(cls, path: Path) -> LagoConfig:
        """Secrets are generated once: a present file is loaded, never regenerated."""
        if path.exists():
            return cls.load(path)
        config = cls.generate()
        config.save(path)
        return config

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{field.name}={'***' if field.name in _SECRET_FIELDS else getattr(self, field.name)!r}"
            for field in fields(self)
        )
        return f"LagoConfig({shown})"
