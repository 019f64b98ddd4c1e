"""The dashboard's login bookkeeping on a fake clock: tokens last a minute and one use, sessions are bounded."""

from __future__ import annotations

from glassmesh.control.sessions import MAX_SESSIONS, MAX_TOKENS, SESSION_TTL_S, TOKEN_TTL_S, Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_good_once_and_for_a_minute() -> None:
    clock = Clock()
    s = Sessions(clock)
    token, ttl = s.mint("alice", "spiffe://t/operator/alice")
    assert ttl == TOKEN_TTL_S == 60
    got = s.redeem(token)
    assert got is not None and got[2].operator == "alice"
    assert s.redeem(token) is None  # twice: never
    late, _ = s.mint("alice", "")
    clock.now += TOKEN_TTL_S + 0.1
    assert s.redeem(late) is None
    assert s.redeem("") is None and s.redeem("made-up") is None


def test_a_session_ends_with_its_lifetime_or_its_credential() -> None:
    clock = Clock()
    s = Sessions(clock)
    sid, key, login = s.redeem(s.mint("alice", "")[0])  # type: ignore[misc]
    assert login.expires == clock.now + SESSION_TTL_S
    assert s.lookup(sid, key) is not None
    clock.now += SESSION_TTL_S
    assert s.lookup(sid, key) is None
    # A credential that expires in ten minutes opens a session of ten minutes.
    sid, key, login = s.redeem(s.mint("bob", "", credential_expires=clock.now + 600)[0])  # type: ignore[misc]
    assert login.expires == clock.now + 600
    clock.now += 601
    assert s.lookup(sid, key) is None
    # ... and one already expired opens none.
    assert s.redeem(s.mint("carol", "", credential_expires=clock.now - 1)[0]) is None


def test_a_session_is_its_cookie_and_its_key_together() -> None:
    s = Sessions(Clock())
    sid, key, _ = s.redeem(s.mint("alice", "")[0])  # type: ignore[misc]
    other_sid, other_key, _ = s.redeem(s.mint("bob", "")[0])  # type: ignore[misc]
    assert s.lookup(sid, key) is not None
    for cookie, k in [(sid, ""), ("", key), (sid, other_key), (other_sid, key), ("made-up", key), (key, sid)]:
        assert s.lookup(cookie, k) is None, (cookie, k)


def test_minting_in_a_loop_grows_nothing_without_end() -> None:
    s = Sessions(Clock())
    first, _ = s.mint("alice", "")
    for _ in range(MAX_TOKENS + 10):
        s.mint("alice", "")
    assert len(s._tokens) == MAX_TOKENS and s.redeem(first) is None  # the oldest went first
    for _ in range(MAX_SESSIONS + 10):
        s.redeem(s.mint("alice", "")[0])
    assert len(s._sessions) == MAX_SESSIONS


def test_log_out_needs_both_secrets() -> None:
    s = Sessions(Clock())
    sid, key, _ = s.redeem(s.mint("alice", "")[0])  # type: ignore[misc]
    assert not s.end(sid, "") and not s.end("", key) and s.lookup(sid, key) is not None
    assert s.end(sid, key) and s.lookup(sid, key) is None and not s.end(sid, key)
