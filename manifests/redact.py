"""Credentials in URIs never reach OUT: what is stored, logged or printed is the redacted form.

Signed URLs (S3/GCS presigned, CDN tokens) and `user:password@host` are the common case at scale.
A stored URI keeps its scheme, host, path and harmless query values, with the userinfo and every
credential-like query value replaced by MARKER. Two URLs that differ only in a secret redact
alike, so identity is not the redacted text: `input_key` hashes the full URI under a key kept
in OUT (readable by its owner only), so the same input keeps its id across runs without the id
revealing (or letting anyone test guesses of) the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MARKER = "REDACTED"
KEY_FILE = ".uri_key"
# Query names whose values are credentials (compared case-insensitively, with '-' and '_' ignored).
SECRET_NAMES = {
    "xamzsignature", "xamzcredential", "xamzsecuritytoken", "signature", "sig", "googleaccessid",
    "xgoogsignature", "xgoogcredential", "token", "accesstoken", "idtoken", "refreshtoken", "authtoken",
    "key", "apikey", "password", "passwd", "pwd", "secret", "clientsecret", "auth", "authorization",
    "credential", "credentials", "session", "sessionid", "skoid", "sktid",  # Azure SAS: sig, skoid, sktid
    "policy", "keypairid", "hmac", "hdnts", "hdnea",  # CloudFront, Akamai
}
_WORDS = ("token", "secret", "signature", "password", "credential", "apikey")


def _is_secret_name(name: str) -> bool:
    n = re.sub(r"[-_.]", "", name.lower())
    return n in SECRET_NAMES or any(w in n for w in _WORDS)


def redact_uri(uri: str | None) -> str | None:
    """The URI with its userinfo and credential-like query (and fragment) values replaced by MARKER."""
    if not uri or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # unparseable: keep nothing that could be a secret
        return uri.split("://", 1)[0] + "://" + MARKER
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MARKER}@{host if ':' not in host else f'[{host}]'}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), _redact_query(parts.fragment)))


def _redact_query(query: str) -> str:
    if not query or "=" not in query:
        return query
    out = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        out.append(f"{name}={MARKER}" if eq and _is_secret_name(unquote(name)) else item)
    return "&".join(out)


def secrets_in(uri: str | None) -> list[str]:
    """The secret substrings of a URI, raw and percent-decoded, longest first (what `scrub` removes)."""
    if not uri or "://" not in uri:
        return []
    found: set[str] = set()
    try:
        parts = urlsplit(uri)
        userinfo = parts.netloc.rpartition("@")[0]
    except ValueError:
        return [uri.split("://", 1)[1]]
    if userinfo:
        found |= {userinfo, *userinfo.split(":", 1)}
    for q in (parts.query, parts.fragment):
        for item in q.split("&"):
            name, eq, value = item.partition("=")
            if eq and value and _is_secret_name(unquote(name)):
                found.add(value)
    found |= {unquote(s) for s in found} | {quote(unquote(s), safe="") for s in found}
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def scrub(text: str | None, *uris: str | None) -> str | None:
    """`text` (an error message, a log line) with every secret of `uris` replaced by MARKER."""
    if not text:
        return text
    for uri in uris:
        for s in secrets_in(uri):
            text = text.replace(s, MARKER)
    return text


def uri_key(out: str | Path) -> bytes:
    """OUT's key for input ids, made on first use with permissions 0600."""
    path = Path(out) / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(32).hex())
    return bytes.fromhex(path.read_text().strip())


def input_key(uri: str, key: bytes | None) -> str:
    """The resume key of one input: sha1 of the URI, or, when it holds a secret, an HMAC under OUT's key."""
    if key is not None and redact_uri(uri) != uri:
        return hmac.new(key, uri.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]
    return hashlib.sha1(uri.encode("utf-8", "surrogatepass")).hexdigest()[:16]
