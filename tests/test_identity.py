"""Sign-in for a shared server (service/identity.py): a roster checked whole, one-time codes used
once, PINs hashed, a throttle that slows wrong tries without locking anyone out, signed expiring
sessions, the server's secret; and runs owned by the student who submitted them."""
from __future__ import annotations

import inspect
import os
import stat

import pytest

from mnist_lab.errors import ConfigError
from mnist_lab.i18n import render
from mnist_lab.runs.store import ResultStore
from mnist_lab.service import identity
from mnist_lab.service.identity import (
    SESSION_MAX_AGE_S,
    Accounts,
    Identity,
    SignInError,
    Throttled,
    check_pin,
    hash_pin,
    parse_roster,
    server_secret,
)

SECRET = b"k" * 32
IP = "10.0.0.7"


class Clock:
    """A fake time.time: tests move it forward instead of sleeping."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(tmp_path, clock) -> Accounts:
    store = ResultStore(tmp_path / "r.sqlite")
    found = Accounts(store, SECRET, clock=clock)
    yield found
    found.close()
    store.close()


def test_without_a_roster_an_id_is_claimed_with_a_pin_then_signs_in_with_it(accounts):
    assert not accounts.has_roster() and accounts.step("2024001") == "new_pin"
    who = accounts.sign_in("2024001", "Ann Lee", "", IP, new_pin="123456")
    assert who == Identity("student", "student:2024001", "2024001", "Ann Lee")
    assert accounts.step("2024001") == "pin"
    assert accounts.sign_in(" 2024001 ", "ann  lee", "123456", IP) == who  # case and spaces of the name do not count
    assert [e.student_id for e in accounts.roster()] == ["2024001"] and not accounts.roster()[0].on_roster


def test_a_session_cookie_signs_in_until_it_expires_or_is_closed(accounts, clock):
    who = accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    cookie = accounts.open_session(who, IP)
    session_id, expires, signature = cookie.split(".")
    assert int(expires) == int(clock.now) + SESSION_MAX_AGE_S and len(signature) == 64
    assert accounts.session(cookie) == who
    assert [s["student_id"] for s in accounts.sessions()] == ["s1"]
    clock.now += SESSION_MAX_AGE_S + 1
    assert accounts.session(cookie) is None and accounts.sessions() == []
    again = accounts.open_session(who, IP)
    accounts.close_session(again)
    assert accounts.session(again) is None


def test_a_tampered_forged_or_malformed_cookie_is_nobody(accounts, clock):
    who = accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    cookie = accounts.open_session(who, IP)
    session_id, expires, signature = cookie.split(".")
    later = f"{session_id}.{int(expires) + 10**6}.{signature}"  # a longer life, same signature
    flipped = cookie[:-1] + ("0" if cookie[-1] != "0" else "1")
    other_key = Accounts(accounts.store, b"x" * 32, clock=clock).open_session(who, IP)  # another server's secret
    for bad in (later, flipped, other_key, "", None, "abc", cookie + ".x", cookie.upper(), "a" * 5000, 42):
        assert accounts.session(bad) is None, bad
    assert accounts.session(cookie) == who


def test_a_cookie_of_a_deleted_session_is_nobody(accounts):
    who = accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    cookie = accounts.open_session(who, IP)
    with accounts._conn:
        accounts._conn.execute("DELETE FROM sessions")
    assert accounts.session(cookie) is None


def test_a_pin_is_stored_as_an_scrypt_hash_that_verifies(accounts):
    stored = hash_pin("123456")
    name, n, r, p, salt, digest = stored.split("$")
    assert (name, n, r, p) == ("scrypt", "16384", "8", "1")
    assert (len(bytes.fromhex(salt)), len(bytes.fromhex(digest))) == (16, 32)
    assert "123456" not in stored and hash_pin("123456") != stored  # salted
    assert check_pin("123456", stored) and not check_pin("123457", stored)
    for broken in ("", None, "scrypt$x", "md5$1$1$1$00$00", stored.replace("scrypt", "scrypt2")):
        assert not check_pin("123456", broken)
    accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    (pin_hash,) = accounts._conn.execute("SELECT pin_hash FROM students").fetchone()
    assert pin_hash.startswith("scrypt$16384$8$1$") and check_pin("123456", pin_hash)


def test_the_server_secret_is_a_0600_file_beside_the_database_unless_the_environment_gives_one(tmp_path):
    db = tmp_path / "r.sqlite"
    secret = server_secret(db, environ={})
    path = tmp_path / "r.sqlite.secret"
    assert len(secret) == 32 and path.read_bytes() == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert server_secret(db, environ={}) == secret  # made once
    assert [p.name for p in tmp_path.iterdir()] == ["r.sqlite.secret"]  # no temporary file left
    assert server_secret(db, environ={"MNIST_LAB_SECRET": "e" * 40}) == b"e" * 40
    with pytest.raises(ConfigError, match="MNIST_LAB_SECRET is too short") as caught:
        server_secret(db, environ={"MNIST_LAB_SECRET": "s3cr3t"})
    assert "s3cr3t" not in str(caught.value)  # the secret is never shown


def test_every_secret_is_compared_in_constant_time():
    source = inspect.getsource(identity)
    assert source.count("hmac.compare_digest") >= 4
    assert "==" not in inspect.getsource(identity.same_secret)
    assert identity.same_secret("tok", "tok") and not identity.same_secret("tok", "tok-longer")


def test_a_refusal_is_one_translated_line(accounts):
    accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    with pytest.raises(SignInError) as caught:
        accounts.sign_in("s1", "Ann", "000000", IP)
    assert render(caught.value, "en") == "The student ID, name or PIN is wrong: check them and try again."
    assert render(caught.value, "zh_CN") == "学号、姓名或 PIN 不对：请检查后再试。"
    assert render(Throttled(1.2), "zh_CN") == "这台设备或这个账号错误尝试太多：请等 2 秒后再试。"
    with pytest.raises(ConfigError) as caught:
        parse_roster("学号,姓名\n0012,张三\n0012,李四\n")
    assert render(caught.value, "zh_CN") == "名单第 3 行与第 2 行的学号 '0012' 重复：请只保留一行。"
