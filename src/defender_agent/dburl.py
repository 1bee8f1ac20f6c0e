"""Database URLs without their secrets, for anything that is printed or logged.

libpq takes a password in three places, and a URL is masked in all of them:

* the URL's userinfo: ``postgresql://svc:PASSWORD@db/defender``;
* the URL's query string: ``?password=PASSWORD`` (any case, percent-encoded key or value),
  and the other secret parameters (``sslpassword``, an OAuth client secret, ...);
* the keyword/value connection string: ``host=db password=PASSWORD`` (spaces around ``=``,
  quoted values ``password='a b'``).

:func:`mask_db_url` masks a URL; :func:`mask_secrets_in` also takes the secrets out of
another text, such as a driver's error message that quotes part of the URL.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

__all__ = [
    "MASK",
    "is_keyword_string",
    "is_secret_key",
    "mask_db_url",
    "mask_secrets_in",
    "secrets_of",
]

MASK: Final = "***"

#: A key is secret when its name contains one of these (password, sslpassword, passfile,
#: oauth_client_secret, a token, ...): masking a harmless one costs nothing.
_SECRET_PARTS: Final = ("pass", "pwd", "secret", "token")

#: ``key = value`` of a keyword/value string; the value quoted ('a \' b') or bare.
_KEYWORD: Final = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*(?:'|$)|(?:[^\s'\\]|\\.)+|(?=\s|$))",
    re.DOTALL,
)
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

#: Secrets shorter than this are not searched for in other texts (they would mask letters).
_MIN_SCRUB: Final = 4


def is_secret_key(key: str) -> bool:
    """Whether a connection parameter holds a secret (any case, percent-encoded).

    >>> [is_secret_key(k) for k in ("password", "SSLPassword", "%70assword", "host", "user")]
    [True, True, True, False, False]
    """
    name = unquote(key).strip().lower()
    return any(part in name for part in _SECRET_PARTS)


def mask_db_url(url: str) -> str:
    r"""The URL (or keyword/value string) with every secret replaced by ``***``.

    >>> mask_db_url("postgresql://svc:s3cret@db:5432/defender")
    'postgresql://svc:***@db:5432/defender'
    >>> mask_db_url("postgresql://svc@db/defender?sslmode=require&PassWord=s3cret")
    'postgresql://svc@db/defender?sslmode=require&PassWord=***'
    >>> mask_db_url("postgres://db/d?%70assword=s3cret&sslpassword=k%65y#frag")
    'postgres://db/d?%70assword=***&sslpassword=***#frag'
    >>> mask_db_url("host=db port=5432 password = 's3 cr\\'et' sslpassword=key dbname=d")
    'host=db port=5432 password = *** sslpassword=*** dbname=d'
    >>> mask_db_url("/var/lib/defender-agent/service.sqlite3")
    '/var/lib/defender-agent/service.sqlite3'
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _mask_keywords(url)
    rest = url[scheme.end() :]
    before_query, sep, query = rest.partition("?")
    if not sep:
        before_query, sep_hash, fragment = rest.partition("#")
        query = ""
    else:
        query, sep_hash, fragment = query.partition("#")
    userinfo, at, host_path = before_query.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        before_query = f"{user}:{MASK}@{host_path}"
    masked = scheme.group() + before_query
    if sep:
        masked += "?" + _mask_query(query)
    if sep_hash:
        masked += "#" + fragment
    return masked


def _mask_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        key, eq, _value = pair.partition("=")
        pairs.append(f"{key}={MASK}" if eq and is_secret_key(key) else pair)
    return "&".join(pairs)


def _mask_keywords(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        if not is_secret_key(match["key"]):
            return match.group()
        return f"{match['key']}{match['eq']}{MASK}"

    return _KEYWORD.sub(one, text)


def secrets_of(url: str) -> list[str]:
    """The secret values in a URL or keyword/value string, as written and decoded.

    >>> secrets_of("postgresql://svc:p%40ss@db/d?password=other")
    ['p%40ss', 'p@ss', 'other']
    >>> secrets_of("host=db password='a b'")
    ["'a b'", 'a b']
    """
    found: list[str] = []
    scheme = _SCHEME.match(url)
    if scheme is not None:
        rest = url[scheme.end() :]
        before_query, _sep, query = rest.partition("?")
        query = query.partition("#")[0]
        userinfo, at, _host = before_query.partition("#")[0].rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
        for pair in query.split("&"):
            key, eq, value = pair.partition("=")
            if eq and is_secret_key(key):
                found.append(value)
    else:
        for match in _KEYWORD.finditer(url):
            if is_secret_key(match["key"]):
                value = match["value"]
                found.append(value)
                if value.startswith("'"):
                    found.append(re.sub(r"\\(.)", r"\1", value.strip("'")))
    out: list[str] = []
    for value in found:
        for form in (value, unquote(value)):
            if form and form not in out:
                out.append(form)
    return out


def mask_secrets_in(text: str, url: str) -> str:
    """``text`` (an error message, say) without the URL's secrets.

    The URL itself is replaced by its masked form, then each secret of 4 characters or more.

    >>> url = "postgresql://svc@db/d?password=s3cret&x=1"
    >>> mask_secrets_in(f'invalid URI query parameter: "x" in {url}; s3cret', url)
    'invalid URI query parameter: "x" in postgresql://svc@db/d?password=***&x=1; ***'
    """
    masked = text.replace(url, mask_db_url(url)) if url else text
    for secret in sorted(secrets_of(url), key=len, reverse=True):
        if len(secret) >= _MIN_SCRUB:
            masked = masked.replace(secret, MASK)
    return masked


#: libpq's connection keywords (a keyword/value string starts with one of them).
_LIBPQ_KEYWORDS: Final = frozenset(
    [
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "sslnegotiation",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    ]
)


def is_keyword_string(text: str) -> bool:
    """Whether ``text`` is a libpq keyword/value connection string (not a URL or a path).

    >>> is_keyword_string("host=db dbname=defender password=s3cret")
    True
    >>> [is_keyword_string(t) for t in ("/srv/service.sqlite3", "postgresql://db/d", "a=b")]
    [False, False, False]
    """
    match = _KEYWORD.match(text.strip())
    return match is not None and "://" not in text and match["key"] in _LIBPQ_KEYWORDS
