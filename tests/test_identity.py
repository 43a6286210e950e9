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


# ------------------------------------------------------------------------------ roster and codes

def test_a_roster_with_a_bom_either_header_and_leading_zeros_keeps_ids_as_text(accounts):
    codes = accounts.import_roster("\ufeff学号,姓名\r\n0012, 张三 \r\n\r\nA-7,Li Si\r\n")
    assert sorted(codes) == ["0012", "A-7"]
    assert all(len(c) == 8 and set(c) <= set(identity.CODE_ALPHABET) for c in codes.values())
    assert not set(identity.CODE_ALPHABET) & set("01OIL")  # nothing to misread on paper
    assert [(e.student_id, e.name, e.on_roster, e.pin_set, e.code_pending) for e in accounts.roster()] \
        == [("0012", "张三", True, False, True), ("A-7", "Li Si", True, False, True)]
    assert accounts.has_roster() and accounts.step("0012") == "code"
    assert parse_roster("Student_ID,Name\n007,Bond\n") == [("007", "Bond")]
    stored = [h for (h,) in accounts._conn.execute("SELECT code_hash FROM students")]
    assert all(h.startswith("hmac-sha256$") for h in stored)
    assert not any(code in h for code in codes.values() for h in stored)  # kept only hashed


@pytest.mark.parametrize(("text", "says"), [
    ("", "The roster is empty"),
    ("id,who\n1,A\n", "The roster's first line must be the header 学号,姓名 (or student_id,name); it is 'id,who'."),
    ("学号,姓名\n", "The roster has a header but no students"),
    ("学号,姓名\n1,A\n2,B,extra\n", "Row 3 of the roster has 3 columns"),
    ("学号,姓名\n1,A\n2 3,B\n", "Row 3 of the roster: the student ID '2 3' may hold only letters"),
    ("学号,姓名\n1,A\n2,\n", "Row 3 of the roster: the name '' must be 1 to 40 printable characters."),
    ("学号,姓名\n1,A\n2," + "x" * 41 + "\n", "Row 3 of the roster: the name 'xxx"),
    ("学号,姓名\n1,A\n2,\"B\tC\"\n", "Row 3 of the roster: the name 'B\\tC'"),
    ("学号,姓名\n1,A\n1,B\n", "Row 3 of the roster repeats the student ID '1' of row 2"),
    ("学号,姓名\n" + "".join(f"{i},N{i}\n" for i in range(2001)), "The roster has 2001 students; at most 2000"),
    ("学号,姓名\n1,\"A\n", "The roster cannot be read as CSV"),
])
def test_a_roster_is_checked_whole_and_a_refused_one_writes_nothing(accounts, text, says):
    accounts.import_roster("学号,姓名\n9,Earlier\n")
    before = accounts.roster()
    with pytest.raises(ConfigError) as caught:
        accounts.import_roster(text)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value) and render(caught.value, "zh_CN") != str(caught.value)
    assert accounts.roster() == before


def test_a_one_time_code_sets_the_pin_once_and_is_used_up(accounts):
    code = accounts.import_roster("学号,姓名\n0012,张三\n")["0012"]
    with pytest.raises(SignInError, match="PIN of 6 to 12 digits"):  # the new PIN is checked before the code
        accounts.sign_in("0012", "张三", code, IP, new_pin="12ab")
    who = accounts.sign_in("0012", "张三", code.lower()[:4] + "-" + code[4:], IP, new_pin="24681357")
    assert who == Identity("student", "student:0012", "0012", "张三")
    assert accounts.step("0012") == "pin" and not accounts.roster()[0].code_pending
    with pytest.raises(SignInError, match="name or PIN is wrong"):
        accounts.sign_in("0012", "张三", code, IP, new_pin="11112222")  # the code again: used up
    assert accounts.sign_in("0012", "张三", "24681357", IP) == who


def test_a_wrong_id_name_pin_or_code_all_read_the_same(accounts):
    codes = accounts.import_roster("学号,姓名\n1,Ann\n2,Bob\n")
    accounts.sign_in("1", "Ann", codes["1"], IP, new_pin="123456")
    said = set()
    wrong = [("1", "Anna", "123456", None), ("1", "Ann", "654321", None), ("3", "Cat", "123456", None),
             ("2", "Bob", "WRONGCOD", "123456"), ("2", "Bo", codes["2"], "123456"), ("bad id!", "Ann", "123456", None)]
    for n, (student_id, name, secret, new_pin) in enumerate(wrong):
        with pytest.raises(SignInError) as caught:
            accounts.sign_in(student_id, name, secret, f"10.0.1.{n}", new_pin=new_pin)
        said.add(str(caught.value))
    assert said == {"The student ID, name or PIN is wrong: check them and try again."}
    with pytest.raises(SignInError, match="not on the class's roster"):
        accounts.step("3")  # only the form's first step tells an id apart


def test_a_roster_takes_back_ids_claimed_before_it(accounts):
    who = accounts.sign_in("1", "Mallory", "", IP, new_pin="123456")  # no roster yet: anyone claims any id
    cookie = accounts.open_session(who, IP)
    off = accounts.open_session(accounts.sign_in("9", "Off", "", IP, new_pin="123456"), IP)
    code = accounts.import_roster("学号,姓名\n1,Ann\n")["1"]
    assert accounts.session(cookie) is None and accounts.step("1") == "code"
    assert accounts.session(off) is None  # left off the roster: signed out, and refused from now on
    with pytest.raises(SignInError, match="not on the class's roster"):
        accounts.step("9")
    with pytest.raises(SignInError):
        accounts.sign_in("1", "Mallory", "123456", IP)
    assert accounts.sign_in("1", "Ann", code, IP, new_pin="777777").name == "Ann"
    assert accounts.import_roster("学号,姓名\n1,Ann Lee\n2,Bob\n").keys() == {"2"}  # on it already: keeps the PIN
    assert accounts.sign_in("1", "ann lee", "777777", IP).name == "Ann Lee"


def test_a_reset_clears_the_pin_ends_the_sessions_and_gives_a_new_code(accounts):
    code = accounts.import_roster("学号,姓名\n1,Ann\n")["1"]
    who = accounts.sign_in("1", "Ann", code, IP, new_pin="123456")
    cookies = [accounts.open_session(who, IP), accounts.open_session(who, "10.0.0.8")]
    fresh = accounts.reset("1")
    assert fresh != code and all(accounts.session(c) is None for c in cookies) and accounts.sessions() == []
    with pytest.raises(SignInError):
        accounts.sign_in("1", "Ann", "123456", IP)  # the old PIN is gone
    assert accounts.sign_in("1", "Ann", fresh, IP, new_pin="654321") == who
    with pytest.raises(ConfigError, match="There is no student 'nobody'"):
        accounts.reset("nobody")
    assert accounts.issue_codes() == {}  # everyone has a PIN
    accounts.import_roster("学号,姓名\n1,Ann\n2,Bob\n")
    assert accounts.issue_codes(["1", "2"]).keys() == {"2"}
    with pytest.raises(ConfigError):
        accounts.issue_codes(["2", "ghost"])


# ------------------------------------------------------------------------------ throttle

def _try(accounts: Accounts, clock: Clock, client: str, pin: str = "000000") -> float:
    """One wrong try from `client` for account s1; the wait it was told (0: it was looked at)."""
    try:
        accounts.sign_in("s1", "Ann", pin, client)
    except Throttled as slowed:
        return slowed.wait_s
    except SignInError:
        return 0.0
    raise AssertionError("signed in with a wrong PIN")


def _flood(accounts: Accounts, clock: Clock, client: str, tries: int) -> list[float]:
    """`tries` wrong tries from `client` for s1, each as soon as the throttle lets it; the waits told."""
    waits = []
    for _ in range(tries):
        wait = _try(accounts, clock, client)
        if wait:  # told to wait: no try counted; come back when told
            waits.append(wait)
            clock.now += wait
            assert _try(accounts, clock, client) == 0.0
    return waits


def test_a_pair_flood_waits_1_2_4_seconds_up_to_30_then_the_clients_60(accounts, clock):
    accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    waits = _flood(accounts, clock, IP, 16)
    # the pair (3 free, cap 30 s), then the client's own count (10 free, cap 60 s) takes over
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30, 32]
    assert accounts.wait_seconds(IP, "s1") == 60
    assert {f["key"]: f["failures"] for f in accounts.failures()} \
        == {f"client:{IP}": 16, "account:s1": 16, f"pair:{IP}|account:s1": 16}
    clock.now += identity.WINDOW_S + 61  # quiet for the window: forgotten
    assert accounts.wait_seconds(IP, "s1") == 0


def test_the_owner_signs_in_at_once_from_their_own_browser_during_a_flood_against_their_account(accounts, clock):
    accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    attacker, owner = "10.9.9.9", "10.0.0.50"
    _flood(accounts, clock, attacker, 12)
    _try(accounts, clock, attacker)  # the attacker's last try: told to wait
    assert accounts.wait_seconds(owner, "s1") == 0  # never failed on it: the account's count does not touch them
    other = Accounts(accounts.store, SECRET, clock=clock)  # another server process: the same counts
    assert other.sign_in("s1", "Ann", "123456", owner).student_id == "s1"  # at once, right after the flood
    assert 0 < accounts.wait_seconds(attacker, "s1")  # the owner's success cleared nothing of the attacker's
    # an owner's typo during the flood: now they share the account's wait, at most 30 s
    with pytest.raises(SignInError):
        other.sign_in("s1", "Ann", "999999", owner)
    assert 0 < accounts.wait_seconds(owner, "s1") <= identity.ACCOUNT_CAP_S == 30
    clock.now += 30
    assert other.sign_in("s1", "Ann", "123456", owner).student_id == "s1"
    assert accounts.clear_failures(f"client:{attacker}") == 1
    other.close()


def test_twelve_students_behind_one_address_sign_in_at_the_same_moment(accounts, clock):
    from concurrent.futures import ThreadPoolExecutor

    nat = "10.0.0.1"  # a classroom behind one NAT address
    students = [(f"s{i}", f"Student {i}") for i in range(12)]
    for sid, name in students:
        accounts.sign_in(sid, name, "", f"10.1.0.{sid[1:]}", new_pin="123456")
    for sid, name in students[:5]:  # a few typos first
        with pytest.raises(SignInError):
            accounts.sign_in(sid, name, "654321", nat)
    servers = [Accounts(accounts.store, SECRET, clock=clock) for _ in students]
    with ThreadPoolExecutor(12) as pool:
        who = list(pool.map(lambda a_s: a_s[0].sign_in(a_s[1][0], a_s[1][1], "123456", nat), zip(servers, students)))
    assert [w.student_id for w in who] == [sid for sid, _ in students]
    for server in servers:
        server.close()


def test_own_successes_never_reset_the_clients_count_and_step_is_throttled_with_it(accounts, clock):
    codes = accounts.import_roster("学号,姓名\nme,Mallory\n" + "".join(f"v{i},V{i}\n" for i in range(12)))
    accounts.sign_in("me", "Mallory", codes["me"], IP, new_pin="123456")
    told = []
    for i in range(12):  # a sign-in to her own account, then a guess at a classmate's code, over and over
        try:
            assert accounts.sign_in("me", "Mallory", "123456", IP).student_id == "me"
        except Throttled as slowed:
            told.append(slowed.wait_s)
            break
        assert accounts.step(f"v{i}", IP) == "code"
        with pytest.raises(SignInError):
            accounts.sign_in(f"v{i}", f"V{i}", "WRONGCOD", IP, new_pin="111111")
    assert told == [1] and i == 10  # 10 free for the client, then it waits, successes or not
    assert {f["key"]: f["failures"] for f in accounts.failures()}[f"client:{IP}"] == 10
    with pytest.raises(Throttled):
        accounts.step("v11", IP)  # the list is learnt no faster than it is guessed
    assert accounts.step("v11", "10.0.0.8") == "code"  # another computer is not slowed
    assert {f["key"]: f["failures"] for f in accounts.failures()}[f"client:{IP}"] == 10  # step counted nothing


def test_tries_of_one_pair_sent_at_the_same_moment_are_counted_as_if_sent_one_by_one(accounts, clock):
    from concurrent.futures import ThreadPoolExecutor

    accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    servers = [Accounts(accounts.store, SECRET, clock=clock) for _ in range(8)]  # a connection each, as processes
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda a: _try(a, clock, IP), servers))
    assert sorted(waits).count(0.0) == identity.PAIR_FREE_TRIES  # the rest were told to wait, unchecked
    assert {f["key"]: f["failures"] for f in accounts.failures()}[f"pair:{IP}|account:s1"] == identity.FREE_TRIES
    for server in servers:
        server.close()


def test_wrong_teacher_tokens_are_throttled_and_compared_in_constant_time(accounts, clock):
    with pytest.raises(SignInError, match="no teacher token"):
        accounts.sign_in_teacher("x", "", IP)
    for guess in ("a", "s3cret-token-longer", "s3cret-tokeX"):  # shorter, longer, one character off
        with pytest.raises(SignInError, match="teacher token is wrong"):
            accounts.sign_in_teacher(guess, "s3cret-token", IP)
    with pytest.raises(Throttled) as caught:
        accounts.sign_in_teacher("s3cret-token", "s3cret-token", IP)
    assert caught.value.wait_s == 1
    # a student who claims the id "teacher" has another key: her successes clear nothing of the token's
    assert accounts.sign_in("teacher", "Eve", "", IP, new_pin="123456").student_id == "teacher"
    assert accounts.sign_in("teacher", "Eve", "123456", IP).student_id == "teacher"
    with pytest.raises(Throttled):
        accounts.sign_in_teacher("s3cret-token", "s3cret-token", IP)
    assert {f["key"] for f in accounts.failures()} == {"token:teacher", f"pair:{IP}|token:teacher", f"client:{IP}"}
    clock.now += 1
    assert accounts.sign_in_teacher("s3cret-token", "s3cret-token", IP) == Identity("teacher", "teacher")
    assert {f["key"] for f in accounts.failures()} == {"token:teacher", f"client:{IP}"}  # the pair's cleared
    assert "compare_digest" in inspect.getsource(identity.same_secret)


def test_a_throttle_key_reads_back_as_kind_client_and_student():
    assert [identity.key_parts(k) for k in ("client:10.0.0.7", "account:2024001", "token:teacher",
                                            "pair:10.0.0.7|account:2024001", "pair:::1|token:teacher",
                                            "account:teacher", "weird")] \
        == [("client", "10.0.0.7", ""), ("account", "", "2024001"), ("teacher", "", ""),
            ("pair", "10.0.0.7", "2024001"), ("pair", "::1", ""), ("account", "", "teacher"), ("", "", "")]


def test_an_unknown_client_is_counted_by_the_account_alone(accounts, clock):
    accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    waits = _flood(accounts, clock, "", 5)
    assert waits == [1, 2] and {f["key"] for f in accounts.failures()} == {"account:s1"}
    clock.now += 4
    assert accounts.sign_in("s1", "Ann", "123456", "").student_id == "s1"  # its own try taken back, no more
    assert {f["key"]: f["failures"] for f in accounts.failures()} == {"account:s1": 5}


# ------------------------------------------------------------------------------ class changes

def test_a_re_import_keeps_the_codes_handed_out_and_issue_codes_replaces_them(accounts):
    first = accounts.import_roster("学号,姓名\n1,Ann\n2,Bob\n")
    assert accounts.import_roster("学号,姓名\n1,Ann\n2,Bob\n3,Cat\n").keys() == {"3"}  # only the newcomer
    assert accounts.sign_in("1", "Ann", first["1"], IP, new_pin="123456").student_id == "1"  # the slip still works
    again = accounts.issue_codes(["2"])  # explicit: replaces Bob's lost slip
    with pytest.raises(SignInError):
        accounts.sign_in("2", "Bob", first["2"], IP, new_pin="123456")
    assert accounts.sign_in("2", "Bob", again["2"], IP, new_pin="123456").student_id == "2"


def test_a_teacher_session_ends_when_the_teacher_token_changes(accounts):
    teacher = accounts.sign_in_teacher("tok-one", "tok-one", IP)
    cookie = accounts.open_session(teacher, IP, teacher_token="tok-one")
    assert accounts.session(cookie, teacher_token="tok-one") == teacher
    assert accounts.session(cookie, teacher_token="tok-two") is None
    assert accounts.session(cookie, teacher_token="") is None  # no token on the server any more
    (mac,) = accounts._conn.execute("SELECT token_mac FROM sessions").fetchone()
    assert len(mac) == 64 and "tok-one" not in mac
    unkeyed = accounts.open_session(teacher, IP)  # opened without the token: refused where one is checked
    assert accounts.session(unkeyed, teacher_token="tok-one") is None
    student = accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    assert accounts.session(accounts.open_session(student, IP), teacher_token="tok-two") == student


def test_close_sessions_signs_out_one_student_or_everyone_but_the_teacher(accounts):
    ann = accounts.sign_in("s1", "Ann", "", IP, new_pin="123456")
    bob = accounts.sign_in("s2", "Bob", "", IP, new_pin="123456")
    teacher = accounts.open_session(Identity("teacher", "teacher"), IP, teacher_token="t")
    ann_cookies = [accounts.open_session(ann, IP), accounts.open_session(ann, "10.0.0.8")]
    bob_cookie = accounts.open_session(bob, IP)
    assert accounts.close_sessions("s1") == 2 and all(accounts.session(c) is None for c in ann_cookies)
    assert accounts.session(bob_cookie) == bob
    assert accounts.close_sessions() == 0
    assert accounts.close_sessions(everyone=True, keep=teacher) == 1
    assert accounts.session(bob_cookie) is None and accounts.session(teacher, teacher_token="t").role == "teacher"
    assert accounts.close_sessions(everyone=True) == 1 and accounts.sessions() == []


def test_removing_a_student_ends_their_account_and_sessions_but_keeps_their_runs(accounts):
    codes = accounts.import_roster("学号,姓名\n1,Ann\n2,Bob\n")
    cookie = accounts.open_session(accounts.sign_in("1", "Ann", codes["1"], IP, new_pin="123456"), IP)
    with accounts._conn:
        accounts._conn.execute("INSERT INTO runs (run_id, status, workspace, student_id, student_name) "
                               "VALUES ('r1', 'finished', 'student:1', '1', 'Ann')")
    accounts.remove("1")
    assert [e.student_id for e in accounts.roster()] == ["2"] and accounts.session(cookie) is None
    with pytest.raises(SignInError, match="not on the class's roster"):
        accounts.step("1")
    runs = accounts.store.visible_runs(None)
    assert list(zip(runs["run_id"], runs["student_id"], runs["student_name"])) == [("r1", "1", "Ann")]
    with pytest.raises(ConfigError, match="There is no student '1'"):
        accounts.remove("1")
    assert accounts.import_roster("学号,姓名\n2,Bob\n") == {} and len(accounts.roster()) == 1  # never removes


def test_a_visitor_gets_a_fresh_anonymous_workspace_held_in_a_session(accounts):
    first, second = accounts.visitor(IP), accounts.visitor(IP)
    assert first.role == "visitor" and first.workspace.startswith("visitor:") and first != second
    assert len(first.workspace) == len("visitor:") + 22 and first.student_id == first.name == ""
    assert accounts.session(accounts.open_session(first, IP)) == first


# ------------------------------------------------------------------------------ the CLI (a headless teacher)

def test_the_class_command_loads_a_roster_prints_codes_resets_and_clears_failures(tmp_path, capsys):
    from mnist_lab.cli.main import main

    db, roster = tmp_path / "class.sqlite", tmp_path / "roster.csv"
    roster.write_bytes("学号,姓名\n1,A\n1,B\n".encode())
    assert main(["--lang", "zh", "class", "roster", str(roster), "--db", str(db)]) == 2
    assert capsys.readouterr().err == "错误：名单第 3 行与第 2 行的学号 '1' 重复：请只保留一行。\n"
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["roster.csv"]  # nothing written

    roster.write_bytes("\ufeff学号,姓名\n0012,张三\n".encode())
    assert main(["class", "roster", str(roster), "--db", str(db)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["student", "ID", "student", "name", "one-time", "code"]
    sid, name, code = table[1].split()
    assert (sid, name, len(code)) == ("0012", "张三", 8)
    store = ResultStore(db)
    accounts = Accounts(store, server_secret(db))  # the server's secret: the file the command made
    assert accounts.sign_in("0012", "张三", code, IP, new_pin="123456").student_id == "0012"
    assert main(["class", "codes", "--db", str(db)]) == 0 and "0 one-time codes" in capsys.readouterr().out
    assert main(["class", "reset", "0012", "--db", str(db)]) == 0
    assert accounts.step("0012") == "code" and "0012" in capsys.readouterr().out
    with pytest.raises(SignInError):
        accounts.sign_in("0012", "张三", "WRONGCOD", IP, new_pin="654321")
    assert main(["class", "failures", "--db", str(db)]) == 0
    assert f"client:{IP}" in capsys.readouterr().out
    assert main(["class", "failures", "--clear", "--db", str(db)]) == 0 and accounts.failures() == []
    assert main(["class", "remove", "0012", "--db", str(db)]) == 0 and accounts.roster() == []
    assert "removed 0012" in capsys.readouterr().out
    assert main(["--lang", "zh", "class", "remove", "0012", "--db", str(db)]) == 2
    assert capsys.readouterr().err.startswith("错误：")
    accounts.close()
    store.close()


def test_a_right_token_leaves_no_wrong_sign_in_on_the_teachers_list(tmp_path):
    """A try is counted before its secret is checked and taken back when it was right: the Class
    page's list of wrong sign-ins then shows nothing for it (it showed '0 wrong tries')."""
    store = ResultStore(tmp_path / "r.sqlite")
    accounts = Accounts(store, b"k" * 32)
    accounts.sign_in_teacher("right-token-123", "right-token-123", "")
    assert accounts.failures() == []
    with pytest.raises(SignInError):
        accounts.sign_in_teacher("wrong", "right-token-123", "")
    assert [f["failures"] for f in accounts.failures()] and all(f["failures"] > 0 for f in accounts.failures())
