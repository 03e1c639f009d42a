"""Admin credentials for the studio.

Where they come from, in order:
1. `MEDISYN_ADMIN_USER` / `MEDISYN_ADMIN_PASSWORD` in the environment (nothing is written);
2. the config file next to the database, `<db dir>/<db stem>.admin.json` (mode 0600), which
   holds the user name and a salted scrypt hash of the password — never the password;
3. neither: a password is generated with `secrets`, its hash written to that file, and the
   plain password handed back once so the CLI can print it (first start only).

Checking a password is constant-time (`hmac.compare_digest` on the scrypt digests, and the
user name is compared the same way). Gradio's built-in login has no lockout, so the checker
has one, per client address across all user names (rotating names gains nothing): every
attempt counts as a failure *before* its hash is computed (and is forgiven when it
succeeds), so parallel requests cannot slip past the count; after `MAX_FAILURES` from one
address, that address is refused without hashing for `LOCKOUT_S`, doubling with every
further failure (exponential back-off, capped at `MAX_LOCKOUT_S`). IPv6 clients count per
/64 network (one host usually holds a whole /64). Another address — the real admin's — is
not affected, so no one can lock the admin out from elsewhere. Gradio calls the checker
with (user, password) only; the address comes from `CLIENT_ADDRESS`, set per request by
`studio.web.security`. That is the TCP peer unless the operator names a trusted proxy
(`medisyn studio --forwarded-allow-ips`): then uvicorn takes it from that proxy's
X-Forwarded-For, and from no one else's.

scrypt costs ~50 ms of CPU. Gradio awaits an async checker on its event loop, so the hash
runs in a small thread pool of its own (`AdminAuth.login`, `HASH_WORKERS` threads; OpenSSL's
scrypt releases the GIL): a login flood neither stalls other requests nor takes more than
that many cores.

Readers never log in here: they authenticate with their invitation token (`studies.readers`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import pathlib
import secrets
import threading
import time

DEFAULT_USER = "admin"
ENV_USER = "MEDISYN_ADMIN_USER"
ENV_PASSWORD = "MEDISYN_ADMIN_PASSWORD"

# scrypt cost: ~50 ms per check on one core — cheap for a login, costly for guessing.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

MAX_FAILURES = 5          # failed attempts per client address, any user name, before the brake
FAILURE_WINDOW_S = 3600.0  # an address's failures are forgotten after this long without one
LOCKOUT_S = 60.0          # first lockout; doubles with every further failure
MAX_LOCKOUT_S = 3600.0
MAX_TRACKED = 10_000      # addresses remembered; the stalest are dropped
HASH_WORKERS = 1          # login hashes at once: one core at most, whatever the flood

# Created on first use (threads start lazily; a fork before then inherits none).
_hash_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _hash_pool
    with _pool_lock:
        if _hash_pool is None:
            _hash_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=HASH_WORKERS, thread_name_prefix="medisyn-login-hash")
        return _hash_pool


def address_key(address: str | None) -> str:
    """The unit the lockout counts: an IPv4 address, an IPv6 /64 network, or the raw text
    of anything else (a unix socket has none: "?")."""
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)

# The client address of the request being served (set by studio.web.security's middleware).
CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "medisyn_client_address", default=None)


def config_path(db_path: str | os.PathLike) -> pathlib.Path:
    """The admin config file that lives next to the database."""
    p = pathlib.Path(db_path)
    return p.parent / f"{p.stem}.admin.json"


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)


@dataclasses.dataclass
class AdminCredentials:
    user: str
    salt: bytes
    digest: bytes
    source: str  # "env" | "file" | "generated"

    @classmethod
    def from_password(cls, user: str, password: str, source: str) -> "AdminCredentials":
        salt = secrets.token_bytes(16)
        return cls(user, salt, hash_password(password, salt), source)

    def matches(self, user: str, password: str) -> bool:
        """Constant-time check of both user name and password."""
        user_ok = hmac.compare_digest(
            hashlib.sha256(user.encode("utf-8")).digest(),
            hashlib.sha256(self.user.encode("utf-8")).digest(),
        )
        pw_ok = hmac.compare_digest(hash_password(password, self.salt), self.digest)
        return user_ok and pw_ok

    def to_json(self) -> dict:
        return {"user": self.user, "salt": self.salt.hex(), "scrypt": self.digest.hex(),
                "scrypt_params": _SCRYPT}


def write_private(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only: created 0600 (no window
    where a secret is world-readable), and fchmod'ed in case a stale temp file had other
    permissions."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)
    os.replace(tmp, path)


def _write_config(path: pathlib.Path, creds: AdminCredentials) -> None:
    write_private(path, json.dumps(creds.to_json(), indent=2))


def load_or_create(db_path: str | os.PathLike, *, env: dict | None = None,
                   reset: bool = False) -> tuple[AdminCredentials, str | None]:
    """The admin credentials for this database, and the plain password if it was just
    generated (None otherwise: it is only ever printed once)."""
    env = os.environ if env is None else env
    if env.get(ENV_PASSWORD):
        user = env.get(ENV_USER) or DEFAULT_USER
        return AdminCredentials.from_password(user, env[ENV_PASSWORD], "env"), None
    path = config_path(db_path)
    if path.exists() and not reset:
        data = json.loads(path.read_text(encoding="utf-8"))
        return AdminCredentials(data["user"], bytes.fromhex(data["salt"]),
                                bytes.fromhex(data["scrypt"]), "file"), None
    user = env.get(ENV_USER) or DEFAULT_USER
    password = secrets.token_urlsafe(12)
    creds = AdminCredentials.from_password(user, password, "generated")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_config(path, creds)
    return creds, password


@dataclasses.dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class AdminAuth:
    """The admin login's checker, with a per-address failure brake and exponential back-off.
    Gradio gets `login` (async: the hash runs off the event loop); calling the object checks
    in the calling thread."""

    def __init__(self, creds: AdminCredentials, *, clock=time.monotonic):
        self.creds = creds
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses: dict[str, _Failures] = {}

    @property
    def user(self) -> str:
        return self.creds.user

    @staticmethod
    def _key(address: str | None) -> str:
        return address_key(CLIENT_ADDRESS.get() if address is None else address)

    def locked(self, user: str | None = None, address: str | None = None) -> bool:
        """Whether logins from `address` (default: the current request's) are refused right
        now — under any user name (`user` is accepted for symmetry and does not matter)."""
        with self._lock:
            f = self._addresses.get(self._key(address))
            return f is not None and self._clock() < f.locked_until

    def _begin(self, key: str) -> bool:
        """Count an attempt from `key` as a failure before hashing (so that parallel
        attempts cannot overtake the count); False while the address is locked."""
        with self._lock:
            now = self._clock()
            f = self._addresses.get(key)
            if f is not None and now < f.locked_until:
                return False  # refused without hashing: a guess in a lockout is wasted
            if f is None or now - f.last > FAILURE_WINDOW_S:
                f = self._addresses[key] = _Failures()
            f.count, f.last = f.count + 1, now
            if f.count >= MAX_FAILURES:
                f.locked_until = now + min(MAX_LOCKOUT_S,
                                           LOCKOUT_S * 2 ** (f.count - MAX_FAILURES))
            if len(self._addresses) > MAX_TRACKED:
                for stale in sorted(self._addresses, key=lambda k: self._addresses[k].last)[
                        :len(self._addresses) - MAX_TRACKED]:
                    if stale != key:
                        del self._addresses[stale]
            return True

    def _succeeded(self, key: str) -> None:
        with self._lock:
            self._addresses.pop(key, None)

    def __call__(self, user: str, password: str) -> bool:
        key = self._key(None)
        if not self._begin(key):
            return False
        if self.creds.matches(user or "", password or ""):
            self._succeeded(key)
            return True
        return False

    async def login(self, user: str, password: str) -> bool:
        """What Gradio calls: the bookkeeping on the event loop (microseconds), the scrypt
        hash in the login thread pool."""
        key = self._key(None)
        if not self._begin(key):
            return False
        ok = await asyncio.get_running_loop().run_in_executor(
            _pool(), self.creds.matches, user or "", password or "")
        if ok:
            self._succeeded(key)
        return ok

    def is_admin(self, username: str | None) -> bool:
        """Server-side check in every admin handler: the session's user is the admin."""
        if not username:
            return False
        return hmac.compare_digest(username.encode("utf-8"), self.creds.user.encode("utf-8"))
