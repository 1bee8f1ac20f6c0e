"""Database URLs are masked in every form libpq takes a password in (issue 9, item 4)."""

from __future__ import annotations

import pytest

from defender_agent.config import Config
from defender_agent.config.load import load_config
from defender_agent.dburl import is_keyword_string, mask_db_url, mask_secrets_in, secrets_of
from defender_agent.service.storage import open_store

SECRET = "Hunter2-secret"

URLS = [
    f"postgresql://svc:{SECRET}@db:5432/defender",
    f"postgres://svc:{SECRET}@h1:5432,h2:5433/defender?sslmode=require",
    f"postgresql://svc@db/defender?password={SECRET}",
    f"postgresql://svc@db/defender?sslmode=require&PASSWORD={SECRET}&application_name=x",
    f"postgresql://svc@db/defender?%70assword={SECRET}",
    "postgresql://svc@db/defender?password=Hunter2%2Dsecret",  # percent-encoded value
    f"postgresql://svc@db/defender?sslpassword={SECRET}",
    f"postgresql://svc@db/defender?oauth_client_secret={SECRET}#frag",
    f"postgresql://svc:{SECRET}@db/defender?password={SECRET}",
    f"host=db port=5432 dbname=defender password={SECRET}",
    f"host=db password = {SECRET} dbname=defender",
    f"host=db password='{SECRET} with spaces' dbname=defender",
    "host=db password='Hunter2\\'-secret' dbname=defender",  # an escaped quote
    f"host=db sslpassword={SECRET}",
    f"host=db Password={SECRET}",
    f"sqlite://u:{SECRET}@/tmp/x",
]


@pytest.mark.parametrize("url", URLS)
def test_every_form_is_masked(url: str) -> None:
    masked = mask_db_url(url)
    assert "Hunter2" not in masked
    assert "***" in masked
    assert secrets_of(url), url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://svc@db:5432/defender?sslmode=require",
        "/var/lib/defender-agent/service.sqlite3",
        "sqlite:///var/lib/x.sqlite3",
        "host=db dbname=defender user=svc",
    ],
)
def test_urls_without_secrets_are_unchanged(url: str) -> None:
    assert mask_db_url(url) == url
    assert secrets_of(url) == []


def test_the_rest_of_the_url_is_kept() -> None:
    url = f"postgresql://svc:{SECRET}@db:5432/defender?sslmode=require&password={SECRET}"
    assert mask_db_url(url) == (
        "postgresql://svc:***@db:5432/defender?sslmode=require&password=***"
    )


def test_a_driver_message_quoting_the_secret_is_scrubbed() -> None:
    url = "postgresql://svc@db/d?password=Hunter2%zz"
    message = 'invalid percent-encoded token: "Hunter2%zz"'
    assert mask_secrets_in(message, url) == 'invalid percent-encoded token: "***"'


def test_keyword_strings_are_recognised() -> None:
    assert is_keyword_string(f"host=db password={SECRET}")
    assert is_keyword_string("  dbname=defender")
    assert not is_keyword_string("/srv/service.sqlite3")
    assert not is_keyword_string("postgresql://host=db")


def test_a_keyword_string_is_opened_as_postgresql_not_a_file(tmp_path: object) -> None:
    """It was a SQLite file named ``host=… password=…`` in the working directory."""
    from defender_agent.errors import StateError

    with pytest.raises(StateError) as caught:
        open_store(f"host=127.0.0.1 port=1 connect_timeout=1 password={SECRET}")
    assert "Hunter2" not in str(caught.value)
    assert "password=***" in str(caught.value)


def test_the_debug_description_of_the_config_masks_the_database_url() -> None:
    config = load_config({"service_db": URLS[2]}, environ={}, command="collect")
    assert isinstance(config, Config)
    assert config.describe()["service_db"] == "postgresql://svc@db/defender?password=***"
