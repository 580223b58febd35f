"""The etcd key layout: `<prefix><kind>/<name>`, one object per key, its value JSON (or YAML).

    /xgate/listener/public      {"port": 10000}
    /xgate/upstream/users       {"endpoints": ["10.0.0.1:8080"]}
    /xgate/route/users          {"match": {"path": {"prefix": "/users"}}, "upstream": "users"}
    /xgate/secret/edge          {"cert": "-----BEGIN CERTIFICATE-----...", "key": "-----BEGIN PRIVATE KEY-----..."}
    /xgate/plugin/cors          {"allow_origins": ["*"]}          (global default settings of a plugin)

A value's `name`, when present, must equal the key's name; when absent it is taken from the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel

from xgate.config.load import load_yaml, validate_object
from xgate.config.schema import KINDS
from xgate.config.tls import REDACTED, REVEAL
from xgate.config.types import NAME_PATTERN
from xgate.errors import ConfigError, ConfigIssue

DEFAULT_PREFIX = "/xgate/"
PLUGIN = "plugin"
KEY_KINDS = (*KINDS, PLUGIN)


def normalize_prefix(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


def key_of(prefix: str, kind: str, name: str) -> bytes:
    return f"{normalize_prefix(prefix)}{kind}/{name}".encode()


def parse_key(prefix: str, key: bytes) -> tuple[str, str] | None:
    """(kind, name) of a key under `prefix`; None for keys that are not xgate objects."""
    text = key.decode(errors="replace")
    rest = text.removeprefix(normalize_prefix(prefix))
    kind, _, name = rest.partition("/")
    if rest == text or kind not in KEY_KINDS or not name or "/" in name:
        return None
    return kind, name


def encode(data: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, so equal objects are equal bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def object_data(obj: BaseModel) -> dict[str, Any]:
    """What is stored for an object: the fields the user set, as plain JSON data; a secret's key as it is (any
    other dump prints it redacted: whatever shows stored data to a user must use redacted_data)."""
    data: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True, context={REVEAL: True})
    return data


def redacted_data(kind: str, data: Any) -> Any:
    """Stored data as it may be shown: a secret's private key and ticket keys replaced by "[redacted <digest>]"
    (a digest of 80+ random bytes tells a changed key from the same one, and nothing about the key)."""
    if kind != "secret" or not isinstance(data, dict):
        return data
    shown = dict(data)
    if isinstance(shown.get("key"), str):
        shown["key"] = _fingerprint(shown["key"])
    if isinstance(shown.get("ticket_keys"), list):
        shown["ticket_keys"] = [_fingerprint(str(key)) for key in shown["ticket_keys"]]
    return shown


def _fingerprint(value: str) -> str:
    return f"{REDACTED[:-1]} sha256:{hashlib.sha256(value.encode()).hexdigest()[:12]}]"


def decode(kind: str, name: str, value: bytes, key: str) -> tuple[Any, list[ConfigIssue]]:
    """Parse and validate one key's value: (object or plugin settings, []) or (None, issues naming the key)."""
    label = f"{kind} {name}"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None, [ConfigIssue(key, label, "", "the value is not UTF-8 text")]
    try:
        data = load_yaml(text, key)
    except ConfigError as exc:
        return None, [ConfigIssue(key, label, "", issue.message) for issue in exc.issues]
    if kind == PLUGIN:
        if data is None or isinstance(data, dict | bool):
            return data, []
        return None, [ConfigIssue(key, label, "", "plugin settings must be a mapping (or false)")]
    if not isinstance(data, dict):
        return None, [ConfigIssue(key, label, "", "the value must be a JSON/YAML mapping")]

    if not re.match(NAME_PATTERN, name):
        return None, [ConfigIssue(key, label, "", f"the key's name {name!r} is not a valid name")]
    stored_name = data.setdefault("name", name)
    if stored_name != name:
        return None, [ConfigIssue(key, label, "name", f"the value names {stored_name!r} but the key names {name!r}")]
    if kind == "secret" and (files := sorted(k for k in ("cert_file", "key_file", "ca_file") if k in data)):
        message = "a secret in etcd holds its PEM text (cert, key, ca), not files: `xgate apply` stores their content"
        return None, [ConfigIssue(key, label, files[0], message)]
    obj, problems = validate_object(kind, data, label)
    issues = [ConfigIssue(key, label, ".".join(str(p) for p in problem.path), problem.message) for problem in problems]
    return obj, issues
