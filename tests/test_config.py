"""Settings: environment, .env files, bad values, production safety."""

import dataclasses
import subprocess
import sys

import pytest
from server import ROOT

import oxc_settings
from oxc_settings import VARIABLES
from oxc_wsgi import ConfigError, Settings, create_app, read_env_file


def test_defaults_follow_0xc(tmp_path):
    settings = Settings.from_environ({}, env_file=tmp_path / "missing")
    assert (settings.port, settings.api_prefix, settings.access_token_expires) == (5000, "/api", 15)
    assert (settings.token_refresh_seconds, settings.refresh_token_expires) == (600, 30)
    assert (settings.max_message_length, settings.rate_limit, settings.cors_origins) == (1000, 100, "*")
    assert not settings.secret_key_enabled and settings.register_enabled and not settings.rate_limit_enabled


def test_every_0xc_variable_is_read_from_the_environment(tmp_path):
    settings = Settings.from_environ(
        {
            "HOST": "0.0.0.0",
            "PORT": "8080",
            "SECRET_KEY": "key",
            "SECRET_KEY_ENABLED": "1",
            "JWT_SECRET_KEY": "j" * 40,
            "REGISTER_ENABLED": "false",
            "ACCESS_TOKEN_EXPIRES": "5",
            "TOKEN_REFRESH_SECONDS": "120",
            "REFRESH_TOKEN_EXPIRES": "7",
            "API_PREFIX": "/v1/",
            "LOG_LEVEL": "debug",
            "DATA_DIR": "/tmp/x",
            "CORS_ORIGINS": "https://a.example, https://b.example",
            "RATE_LIMIT_ENABLED": "yes",
            "RATE_LIMIT": "30",
            "MAX_MESSAGE_LENGTH": "500",
            "OXC_ENV": "testing",
        },
        env_file=None,
    )
    assert settings == Settings(
        environment="testing",
        host="0.0.0.0",
        port=8080,
        secret_key="key",
        secret_key_enabled=True,
        jwt_secret_key="j" * 40,
        register_enabled=False,
        access_token_expires=5,
        token_refresh_seconds=120,
        refresh_token_expires=7,
        api_prefix="/v1",
        log_level="DEBUG",
        data_dir="/tmp/x",
        cors_origins=("https://a.example", "https://b.example"),
        rate_limit_enabled=True,
        rate_limit=30,
        max_message_length=500,
    )


def test_flask_env_is_understood_when_oxc_env_is_absent():
    assert Settings.from_environ({"FLASK_ENV": "testing"}, env_file=None).environment == "testing"


def test_a_dotenv_file_is_read_and_the_environment_wins(tmp_path):
    path = tmp_path / ".env"
    path.write_text(
        '# comment\nexport PORT=7000\nAPI_PREFIX="/chat"\nLOG_LEVEL=debug  # inline\n'
        "SECRET_KEY='a b#c'\n\nRATE_LIMIT=5\n"
    )
    settings = Settings.from_environ({"RATE_LIMIT": "9"}, env_file=path)
    assert (settings.port, settings.api_prefix, settings.log_level) == (7000, "/chat", "DEBUG")
    assert settings.secret_key == "a b#c" and settings.rate_limit == 9


def test_a_malformed_dotenv_line_names_the_file_and_line(tmp_path):
    path = tmp_path / ".env"
    path.write_text("PORT=1\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"\.env:2"):
        read_env_file(path)


@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("SECRET_KEY_ENABLED", "maybe"),
        ("ACCESS_TOKEN_EXPIRES", "0"),
        ("API_PREFIX", "api"),
        ("LOG_LEVEL", "LOUD"),
        ("RATE_LIMIT", "-3"),
        ("OXC_ENV", "staging"),
        ("MAX_MESSAGE_LENGTH", "1e3"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_environ({name: value}, env_file=None)


def test_production_refuses_the_published_or_a_short_jwt_secret_but_takes_a_generated_one(tmp_path):
    from oxc_wsgi import DEV_JWT_SECRET

    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app(Settings(environment="production", jwt_secret_key=DEV_JWT_SECRET), data_dir=None)
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app(Settings(environment="production", jwt_secret_key="short"), data_dir=None)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(Settings(environment="production", jwt_secret_key="s" * 40, secret_key_enabled=True), data_dir=None)
    create_app(Settings(environment="production", jwt_secret_key="s" * 40), data_dir=None).core.close()
    create_app(Settings(environment="production"), data_dir=tmp_path / "data").core.close()  # generated


def test_the_published_development_secret_is_refused_in_every_environment():
    from oxc_wsgi import DEV_JWT_SECRET

    for environment in ("development", "testing"):
        with pytest.raises(ConfigError, match="JWT_SECRET_KEY is the published development value"):
            create_app(Settings(environment=environment, jwt_secret_key=DEV_JWT_SECRET), data_dir=None)


def _run(env, *args):
    environment = {"PATH": "/usr/bin:/bin", "DATA_DIR": "/nonexistent-never-created"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "oxc_wsgi.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=30
    )


def test_start_up_with_a_bad_value_stops_with_a_message_naming_it():
    result = _run({"PORT": "abc"}, "serve")
    assert result.returncode == 2
    assert "PORT must be a whole number (got 'abc')" in result.stderr


def test_start_up_in_production_with_the_published_or_a_short_secret_stops():
    from oxc_wsgi import DEV_JWT_SECRET

    for secret in (DEV_JWT_SECRET, "short"):
        result = _run({"OXC_ENV": "production", "JWT_SECRET_KEY": secret}, "serve")
        assert result.returncode == 2 and "JWT_SECRET_KEY" in result.stderr


def test_env_example_lists_exactly_the_declared_variables_with_their_defaults():
    listed = dict(read_env_file(f"{ROOT}/.env.example"))
    assert set(listed) == {variable.name for variable in VARIABLES}
    for variable in VARIABLES:
        assert variable.parse(listed[variable.name]) == variable.default, variable.name
    assert Settings.from_environ(listed, env_file=None) == Settings()


def test_the_readme_settings_table_is_the_one_the_declarations_give():
    with open(f"{ROOT}/README.md", encoding="utf-8") as f:
        readme = f.read()
    assert oxc_settings.readme_table() in readme
    rows = [line.split("`") for line in oxc_settings.readme_table().splitlines()[2:]]
    assert [row[1] for row in rows] == [variable.name for variable in VARIABLES]
    # Beside each variable, the create_app keyword that replaces it: exactly the Settings field.
    assert [row[3] for row in rows] == [field.name for field in dataclasses.fields(Settings)]


def test_each_setting_is_declared_once_with_its_default_on_the_settings_field():
    fields = {field.name: field.default for field in dataclasses.fields(Settings)}
    assert fields == {variable.field: variable.default for variable in VARIABLES}
    assert all(variable.doc and variable.name.isupper() for variable in VARIABLES)
    assert len({variable.name for variable in VARIABLES}) == len(VARIABLES)


def test_create_app_takes_exactly_the_declared_settings_as_keyword_overrides(tmp_path):
    with pytest.raises(TypeError, match="no_such_setting"):
        create_app(Settings(), data_dir=None, no_such_setting=1)


def test_importing_the_server_does_not_import_the_client():
    code = "import sys, oxc_wsgi; assert 'oxc_client' not in sys.modules and 'oxc_cli' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
