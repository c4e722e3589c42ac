"""Configuration from STUDYCAST_* variables and .env: defaults, validation, the secret key."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from server.cli import main
from server.settings import SECRET_FILE, Settings
from server.tokens import issue_node_token

FIELDS = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No STUDYCAST_* setting from the outside, and a cwd without a .env file."""
    for name in FIELDS:
        monkeypatch.delenv(f"STUDYCAST_{name}", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def error_fields(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


# -- sources ----------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    s = Settings()
    assert s.model_dump() == {
        "host": "127.0.0.1",
        "port": 8080,
        "data_dir": Path("data"),
        "database_url": None,
        "secret_key": None,
        "public_base_url": None,
        "ice_addresses": None,
        "max_viewers": 500,
        "behind_kb": 256,
        "login_ttl_hours": 12.0,
        "max_body_bytes": 1024 * 1024,
        "evidence_interval_s": 15.0,
        "retention_recordings_days": None,
        "retention_raw_events_days": None,
        "tick_interval_s": 1.0,
        "origin_url": None,
        "node_token": None,
        "node_name": None,
    }
    assert (s.is_edge, s.resolved_node_name()) == (False, "origin")
    assert s.resolved_database_url() == f"sqlite:///{tmp_path.resolve()}/data/studycast.db"
    assert s.base_url() == "http://127.0.0.1:8080"
    assert s.base_url(port=9123) == "http://127.0.0.1:9123"
    assert not (tmp_path / "data").exists()  # nothing is created just by reading settings


def test_an_edge_needs_its_origin_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYCAST_ORIGIN_URL", "http://origin.example:8080/")
    with pytest.raises(ValidationError, match="needs node_token"):
        Settings()
    token = issue_node_token("k" * 32, "edge-sh", now=datetime.now(UTC), ttl=timedelta(days=1))
    monkeypatch.setenv("STUDYCAST_NODE_TOKEN", token)
    edge = Settings()
    assert (edge.is_edge, edge.origin_url, edge.resolved_node_name()) == (
        True,
        "http://origin.example:8080",
        "edge-sh",
    )
    monkeypatch.setenv("STUDYCAST_NODE_NAME", "shanghai")
    assert Settings().resolved_node_name() == "shanghai"
    monkeypatch.setenv("STUDYCAST_NODE_NAME", "上海 1")
    with pytest.raises(ValidationError, match="node_name"):
        Settings()
    monkeypatch.delenv("STUDYCAST_NODE_NAME")
    monkeypatch.setenv("STUDYCAST_ORIGIN_URL", "origin.example")
    with pytest.raises(ValidationError, match="origin_url"):
        Settings()
    monkeypatch.delenv("STUDYCAST_ORIGIN_URL")
    with pytest.raises(ValidationError, match="only used by an edge"):
        Settings()


def test_ice_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYCAST_ICE_ADDRESSES", " 127.0.0.1, 192.0.2.10 ,::1")
    assert Settings().ice_addresses == ["127.0.0.1", "192.0.2.10", "::1"]
    monkeypatch.setenv("STUDYCAST_ICE_ADDRESSES", "relay.example.org")
    with pytest.raises(ValidationError, match="ice_addresses"):
        Settings()
    monkeypatch.setenv("STUDYCAST_ICE_ADDRESSES", "")
    assert Settings().ice_addresses is None


def test_env_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STUDYCAST_HOST", "0.0.0.0")
    monkeypatch.setenv("STUDYCAST_PORT", "9000")
    monkeypatch.setenv("STUDYCAST_DATA_DIR", str(tmp_path / "数据"))
    monkeypatch.setenv("STUDYCAST_LOGIN_TTL_HOURS", "1.5")
    monkeypatch.setenv("PORT", "1")  # unprefixed: not ours
    monkeypatch.setenv("STUDYCAST_NOT_A_SETTING", "x")  # unknown: ignored
    s = Settings()
    assert (s.host, s.port, s.data_dir, s.login_ttl_hours) == (
        "0.0.0.0",
        9000,
        tmp_path / "数据",
        1.5,
    )
    assert s.resolved_database_url() == f"sqlite:///{tmp_path / '数据' / 'studycast.db'}"
    # Listening on every address still gives a URL people can open.
    assert s.base_url() == "http://127.0.0.1:9000"


def test_database_url_wins_over_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYCAST_DATABASE_URL", "postgresql://db.example/studycast")
    monkeypatch.setenv("STUDYCAST_DATA_DIR", "/srv/studycast")
    assert Settings().resolved_database_url() == "postgresql://db.example/studycast"


def test_dotenv_in_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# studycast configuration\n"
        "STUDYCAST_PORT=9100\n"
        "STUDYCAST_HOST=10.0.0.5\n"
        "STUDYCAST_PUBLIC_BASE_URL=https://study.example.org/\n"
        "STUDYCAST_DATA_DIR=store\n"
        "PORT=1\n",
        encoding="utf-8",
    )
    s = Settings()
    assert (s.port, s.host, s.public_base_url, s.data_dir) == (
        9100,
        "10.0.0.5",
        "https://study.example.org",
        Path("store"),
    )
    assert s.base_url() == "https://study.example.org"
    assert s.base_url(port=1) == "https://study.example.org"
    # The environment overrides .env, and keyword arguments (the CLI's options) override both.
    monkeypatch.setenv("STUDYCAST_PORT", "9200")
    assert Settings().port == 9200
    assert Settings(port=9300).port == 9300


def test_dotenv_elsewhere_is_not_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STUDYCAST_PORT=9100\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert Settings().port == 8080


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "70000", "less than or equal to 65535"),
        ("PORT", "-1", "greater than or equal to 0"),
        ("PORT", "abc", "valid integer"),
        ("PUBLIC_BASE_URL", "study.example.org", "must start with http:// or https://"),
        ("PUBLIC_BASE_URL", "ftp://study.example.org", "must start with http:// or https://"),
        ("SECRET_KEY", "x" * 31, "at least 32 characters"),
        ("LOGIN_TTL_HOURS", "0", "greater than 0"),
        ("MAX_BODY_BYTES", "10", "greater than or equal to 1024"),
        ("BEHIND_KB", "-1", "greater than or equal to 0"),
        ("BEHIND_KB", "lots", "valid integer"),
    ],
)
def test_invalid_env_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"STUDYCAST_{name}", value)
    with pytest.raises(ValidationError, match=message) as info:
        Settings()
    assert error_fields(info.value) == [(name.lower(),)]


def test_invalid_dotenv_value_names_the_field(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STUDYCAST_PORT=70000\n", encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert error_fields(info.value) == [("port",)]


def test_every_invalid_field_is_reported() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(port=70000, public_base_url="example.org", secret_key="short")
    assert sorted(error_fields(info.value)) == [("port",), ("public_base_url",), ("secret_key",)]


def test_boundary_values_are_accepted() -> None:
    s = Settings(port=0, secret_key="k" * 32, public_base_url="http://h")
    assert (s.port, s.secret_key, s.public_base_url) == (0, "k" * 32, "http://h")


# -- the secret key ---------------------------------------------------------------------------


def test_secret_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data")
    key = s.resolved_secret_key()
    path = tmp_path / "data" / SECRET_FILE
    assert len(key) >= 32
    assert mode(path) == 0o600
    assert path.read_text(encoding="ascii") == key + "\n"
    # Reused by the next process (a fresh Settings), not regenerated.
    again = Settings(data_dir=tmp_path / "data").resolved_secret_key()
    assert again == key
    assert mode(path) == 0o600


def test_secret_key_differs_between_installations(tmp_path: Path) -> None:
    a = Settings(data_dir=tmp_path / "a").resolved_secret_key()
    b = Settings(data_dir=tmp_path / "b").resolved_secret_key()
    assert a != b


def test_configured_secret_key_wins_and_writes_nothing(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data", secret_key="s" * 40)
    assert s.resolved_secret_key() == "s" * 40
    assert not (tmp_path / "data").exists()


def test_short_stored_secret_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / SECRET_FILE).write_text("too-short\n", encoding="ascii")
    (data / SECRET_FILE).chmod(0o600)
    key = Settings(data_dir=data).resolved_secret_key()
    assert len(key) >= 32
    assert (data / SECRET_FILE).read_text(encoding="ascii") == key + "\n"


def test_regenerated_secret_is_private_even_if_the_old_file_was_not(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / SECRET_FILE).write_text("", encoding="ascii")
    (data / SECRET_FILE).chmod(0o644)
    Settings(data_dir=data).resolved_secret_key()
    assert mode(data / SECRET_FILE) == 0o600


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    from attendance.errors import InvalidInput

    (tmp_path / "file").write_text("not a directory")
    s = Settings(data_dir=tmp_path / "file" / "data")
    with pytest.raises(InvalidInput, match="cannot be created"):
        s.resolved_secret_key()


# -- the CLI reports bad configuration cleanly ------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"STUDYCAST_PORT": "abc"},
            "Error: invalid configuration: STUDYCAST_PORT: "
            "Input should be a valid integer, unable to parse string as an integer\n",
        ),
        (
            {"STUDYCAST_PUBLIC_BASE_URL": "study.example.org"},
            "Error: invalid configuration: STUDYCAST_PUBLIC_BASE_URL: "
            "Value error, must start with http:// or https://\n",
        ),
        (
            {"STUDYCAST_PORT": "70000", "STUDYCAST_SECRET_KEY": "short"},
            "Error: invalid configuration: STUDYCAST_PORT: "
            "Input should be less than or equal to 65535; "
            "STUDYCAST_SECRET_KEY: Value error, must be at least 32 characters\n",
        ),
    ],
)
def test_cli_reports_invalid_configuration(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, ["db", "current"], env=env)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", message)
    assert not (tmp_path / "data").exists()


def test_cli_reports_invalid_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STUDYCAST_LOGIN_TTL_HOURS=-3\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["unit", "list"])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: invalid configuration: STUDYCAST_LOGIN_TTL_HOURS: Input should be greater than 0\n"
    )


def test_cli_options_override_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/from-option.db"
    result = CliRunner().invoke(
        main,
        ["--database-url", url, "db", "upgrade"],
        env={"STUDYCAST_DATABASE_URL": f"sqlite:///{tmp_path}/from-env.db"},
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-option.db").exists()
    assert not (tmp_path / "from-env.db").exists()


def test_cli_data_dir_from_env_and_option(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["db", "upgrade"], env={"STUDYCAST_DATA_DIR": str(tmp_path / "e")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e" / "studycast.db").exists()
    result = runner.invoke(
        main,
        ["--data-dir", str(tmp_path / "o"), "db", "upgrade"],
        env={"STUDYCAST_DATA_DIR": str(tmp_path / "e2")},
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "studycast.db").exists()
    assert not (tmp_path / "e2").exists()
