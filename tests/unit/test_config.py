"""Settings parse strictly and name the variable that is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import REPO_ROOT, describe_settings, load_settings
from shared.errors import ConfigError


def test_defaults_need_nothing():
    s = load_settings({})
    assert s.database_url is None and s.redis_url is None  # embedded servers
    assert s.api_port == 8000 and s.fetch_allow_private is False


@pytest.mark.parametrize("name,value,fragment", [
    ("LOOKALIKE_API_PORT", "eighty", "LOOKALIKE_API_PORT: expected an integer"),
    ("LOOKALIKE_API_PORT", "70000", "LOOKALIKE_API_PORT: must be <= 65535"),
    ("LOOKALIKE_FETCH_ALLOW_PRIVATE", "maybe", "LOOKALIKE_FETCH_ALLOW_PRIVATE: expected a boolean"),
    ("LOOKALIKE_DATABASE_URL", "mysql://x", "LOOKALIKE_DATABASE_URL: expected a URL"),
    ("LOOKALIKE_REDIS_URL", "localhost:6379", "LOOKALIKE_REDIS_URL: expected a URL"),
    ("LOOKALIKE_FETCH_TIMEOUT_S", "-1", "LOOKALIKE_FETCH_TIMEOUT_S: must be >= 0.1"),
    ("LOOKALIKE_ADMIN_TOKEN", "   ", "LOOKALIKE_ADMIN_TOKEN: must not be empty"),
    ("LOOKALIKE_DATABSE_URL", "postgresql://x", "unknown setting(s) LOOKALIKE_DATABSE_URL"),
])
def test_bad_values_name_the_variable(name, value, fragment):
    with pytest.raises(ConfigError) as err:
        load_settings({name: value})
    assert fragment in str(err.value)


def test_values_parse():
    s = load_settings({"LOOKALIKE_FETCH_ALLOW_PRIVATE": "yes", "LOOKALIKE_API_PORT": "9000",
                       "LOOKALIKE_VAR_DIR": "scratch/x", "LOOKALIKE_REDIS_URL": "redis://h:1/2"})
    assert s.fetch_allow_private is True and s.api_port == 9000 and s.var_dir == Path("scratch/x")
    assert s.redis_url == "redis://h:1/2"


def test_env_example_documents_every_setting():
    text = (REPO_ROOT / ".env.example").read_text()
    for name, _, _ in describe_settings():
        assert f"# {name}=" in text, f"{name} missing from .env.example"
