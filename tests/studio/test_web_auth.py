"""Admin credentials and the login brake (`studio.web.auth`)."""
from __future__ import annotations

import stat

from studio.web import auth
from studio_fixtures import from_address


def test_admin_credentials_generated_hashed_and_reused(tmp_path):
    db = tmp_path / "s.db"
    creds, password = auth.load_or_create(db, env={})
    assert password and len(password) >= 16 and creds.user == "admin"
    cfg = auth.config_path(db)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert password not in cfg.read_text()
    again, pw2 = auth.load_or_create(db, env={})
    assert pw2 is None and again.matches("admin", password)
    assert not again.matches("admin", password + "x") and not again.matches("root", password)
    reset, pw3 = auth.load_or_create(db, env={}, reset=True)
    assert pw3 and pw3 != password and reset.matches("admin", pw3)
    env_creds, pw4 = auth.load_or_create(db, env={auth.ENV_USER: "chief",
                                                  auth.ENV_PASSWORD: "s3cret"})
    assert pw4 is None and env_creds.source == "env" and env_creds.matches("chief", "s3cret")




def test_admin_auth_brake_per_address_and_user_with_backoff():
    now = [0.0]
    a = auth.AdminAuth(auth.AdminCredentials.from_password("admin", "right", "env"),
                       clock=lambda: now[0])
    attacker, admin = "203.0.113.9", "198.51.100.7"
    assert from_address(admin, a, "admin", "right")
    for _ in range(auth.MAX_FAILURES):
        assert not from_address(attacker, a, "admin", "wrong")
    # The attacker's address is locked for that user name, even with the right password ...
    assert a.locked("admin", attacker) and not from_address(attacker, a, "admin", "right")
    # ... and the real admin, from another address, is not locked out.
    assert not a.locked("admin", admin) and from_address(admin, a, "admin", "right")
    # Exponential back-off: every further failure doubles the wait.
    waits = []
    for _ in range(3):
        start = now[0]
        while a.locked("admin", attacker):
            now[0] += 1
        waits.append(now[0] - start)
        assert not from_address(attacker, a, "admin", "wrong")
    assert waits[0] >= auth.LOCKOUT_S and waits[1] >= 2 * auth.LOCKOUT_S - 1
    assert waits[2] >= 4 * auth.LOCKOUT_S - 1
    # The lock holds for every user name from that address; success resets.
    assert a.locked("root", attacker)
    now[0] += auth.MAX_LOCKOUT_S + 1
    assert from_address(attacker, a, "admin", "right") and not a.locked("admin", attacker)
    assert a.is_admin("admin") and not a.is_admin(None) and not a.is_admin("Admin")
