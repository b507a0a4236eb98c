"""The REST session store (sscontrold.domain.sessions), with a fake clock."""

from __future__ import annotations

import pytest

from defaults import session_limits
from sscontrold.domain import sessions as S
from sscontrold.domain.metrics import MemoryRecorder
from sscontrold.domain.sessions import SessionStore

T0 = 1_700_000_000.25


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def body(session_id="abc123", **kw):
    out = {"session_id": session_id, "offer": "v=0 offer",
           "candidates": [{"candidate": "candidate:1 1 udp 1 10.0.0.1 5000 typ host", "sdpMid": "0",
                           "sdpMLineIndex": 0}]}
    out.update(kw)
    return out


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(clock):
    return SessionStore(clock, session_limits())


def status_of(fn, *args, **kw):
    with pytest.raises(S.SessionError) as e:
        fn(*args, **kw)
    return e.value.status, e.value.message


# --- create


def test_create_and_view(store, clock):
    s = store.create(body(public_key="pk", pin_hash="ph"), owner="1.1.1.1")
    assert s.expires_at == int(T0) + 300 + 1  # rounded up: at least ttl seconds
    assert isinstance(s.expires_at, int)
    view = store.get("abc123", "1.1.1.1")
    assert view == {
        "offer": "v=0 offer",
        "candidates": [{"candidate": "candidate:1 1 udp 1 10.0.0.1 5000 typ host", "sdpMid": "0",
                        "sdpMLineIndex": 0}],
        "public_key": "pk",
        "expires_at": s.expires_at,
        "status": "waiting",
    }
    assert "pin_hash" not in view and "answer" not in view and "client_candidates" not in view


def test_optional_fields_left_out_and_nulls_accepted(store):
    store.create(body(public_key=None, pin_hash=None, ttl=None,
                      candidates=[{"candidate": "c", "sdpMid": None, "sdpMLineIndex": None, "extra": 1}]))
    view = store.get("abc123")
    assert "public_key" not in view
    assert view["candidates"] == [{"candidate": "c"}]


def test_ttl_default_cap_and_minimum(clock):
    store = SessionStore(clock, session_limits(ttl_default=60, ttl_max=120))
    assert store.create(body("a")).expires_at == int(T0) + 61
    assert store.create(body("b", ttl=10)).expires_at == int(T0) + 11
    assert store.create(body("c", ttl=10_000)).expires_at == int(T0) + 121  # capped, not refused
    assert store.create(body("d", ttl=1)).expires_at == int(T0) + 2
    assert store.create(body("e", ttl=30.0)).expires_at == int(T0) + 31
    for bad in (0, -5, 1.5, "60", True, [1]):
        code, msg = status_of(store.create, body("f", ttl=bad))
        assert code == 400 and msg.startswith("ttl"), (bad, msg)


def test_expiry_is_whole_seconds_and_at_least_ttl():
    clock = Clock(1000.0)
    store = SessionStore(clock, session_limits())
    s = store.create(body(ttl=5))
    assert s.expires_at == 1005
    clock.t = 1004.999
    store.get("abc123")
    clock.t = 1005.0
    assert status_of(store.get, "abc123") == (410, "session expired")


def test_create_conflict(store):
    store.create(body())
    assert status_of(store.create, body()) == (409, "session already exists")


def test_create_over_expired_session_and_tombstone(store, clock):
    store.create(body(ttl=5))
    clock.advance(6)
    store.create(body(ttl=5))  # the old one is expired: no conflict
    assert store.get("abc123")["status"] == "waiting"


def test_count_limit(clock):
    store = SessionStore(clock, session_limits(max_count=2))
    store.create(body("a", ttl=5))
    store.create(body("b", ttl=50))
    assert status_of(store.create, body("c")) == (503, "too many sessions, try again later")
    store.delete("b")
    store.create(body("c"))
    clock.advance(6)  # "a" expires: room again, even before a sweep
    store.create(body("d"))
    assert len(store) == 2


# --- validation


@pytest.mark.parametrize("change, message", [
    ({"session_id": None}, "session_id is required"),
    ({"session_id": 12}, "session_id must be a string"),
    ({"session_id": ""}, "session_id must be 1 to 64 characters of A-Z a-z 0-9 _ -"),
    ({"session_id": "a/b"}, "session_id must be 1 to 64 characters of A-Z a-z 0-9 _ -"),
    ({"session_id": "x" * 65}, "session_id must be 1 to 64 characters of A-Z a-z 0-9 _ -"),
    ({"offer": None}, "offer is required"),
    ({"offer": 5}, "offer must be a string"),
    ({"offer": ""}, "offer must not be empty"),
    ({"offer": "x" * 60001}, "offer is longer than 60000 bytes"),
    ({"offer": "é" * 30001}, "offer is longer than 60000 bytes"),
    ({"candidates": None}, "candidates is required"),
    ({"candidates": {"candidate": "c"}}, "candidates must be a list of ICE candidates"),
    ({"candidates": ["c"]}, "candidates[0] must be an object with a candidate string"),
    ({"candidates": [{"candidate": "c"}, {}]}, "candidates[1].candidate is required"),
    ({"candidates": [{"candidate": 1}]}, "candidates[0].candidate must be a string"),
    ({"candidates": [{"candidate": "x" * 2049}]}, "candidates[0].candidate is longer than 2048 bytes"),
    ({"candidates": [{"candidate": "c", "sdpMid": 0}]},
     "candidates[0].sdpMid must be a string of at most 128 characters"),
    ({"candidates": [{"candidate": "c", "sdpMLineIndex": "0"}]},
     "candidates[0].sdpMLineIndex must be a whole number from 0 to 65535"),
    ({"candidates": [{"candidate": "c", "sdpMLineIndex": True}]},
     "candidates[0].sdpMLineIndex must be a whole number from 0 to 65535"),
    ({"candidates": [{"candidate": "c", "sdpMLineIndex": -1}]},
     "candidates[0].sdpMLineIndex must be a whole number from 0 to 65535"),
    ({"candidates": [{"candidate": "c"}] * 65}, "candidates has more than 64 entries"),
    ({"public_key": 1}, "public_key must be a string"),
    ({"public_key": "k" * 8193}, "public_key is longer than 8192 bytes"),
    ({"pin_hash": ["x"]}, "pin_hash must be a string"),
])
def test_create_validation(store, change, message):
    assert status_of(store.create, body(**change)) == (400, message)
    assert len(store) == 0


def test_empty_candidate_string_is_allowed(store):
    # An empty candidate is how browsers say "end of candidates".
    store.create(body(candidates=[{"candidate": ""}]))
    assert store.get("abc123")["candidates"] == [{"candidate": ""}]


def test_bad_ids_on_operations(store):
    for op in (lambda i: store.get(i), lambda i: store.delete(i),
               lambda i: store.answer(i, {"answer": "a"}),
               lambda i: store.add_ice(i, {"role": "host", "candidate": {"candidate": "c"}})):
        assert status_of(op, "bad id!")[0] == 400
        assert status_of(op, "unknown") == (404, "session not found")


# --- get and the attempts guard


def test_attempts_guard_like_the_worker(store):
    """3 GETs by another address answer, the 4th is refused and deletes the session."""
    store.create(body(), owner="host")
    for _ in range(3):
        store.get("abc123", "viewer")
    assert status_of(store.get, "abc123", "viewer") == (429, "too many attempts")
    assert "abc123" not in store
    # The id then answers 429 for a while (also to its host), not 404.
    assert status_of(store.get, "abc123", "host") == (429, "too many attempts")
    assert status_of(store.answer, "abc123", {"answer": "a"}) == (429, "too many attempts")


def test_attempts_count_all_addresses_but_the_hosts(store):
    store.create(body(), owner="host")
    store.get("abc123", "a")
    store.get("abc123", "b")
    store.get("abc123", None)  # unknown address: counted
    assert status_of(store.get, "abc123", "c")[0] == 429


def test_host_polling_its_own_session_never_counts(store):
    store.create(body(), owner="host")
    for _ in range(50):
        assert store.get("abc123", "host")["status"] == "waiting"
    store.get("abc123", "viewer")
    store.answer("abc123", {"answer": "v=0 answer"})
    assert store.get("abc123", "host")["answer"] == "v=0 answer"


def test_gets_after_the_answer_do_not_count(store):
    store.create(body(), owner="host")
    store.get("abc123", "viewer")
    store.answer("abc123", {"answer": "a"})
    for _ in range(20):  # the viewer polls for trickled host candidates
        assert store.get("abc123", "viewer")["status"] == "answered"


def test_max_attempts_follows_limits(clock):
    store = SessionStore(clock, session_limits(max_attempts=1))
    store.create(body(), owner="host")
    store.get("abc123", "v")
    assert status_of(store.get, "abc123", "v")[0] == 429
    store.limits = session_limits(max_attempts=5)  # a reload
    store.create(body(), owner="host")
    for _ in range(5):
        store.get("abc123", "v")
    assert status_of(store.get, "abc123", "v")[0] == 429


# --- answer, ice, delete


def test_answer(store):
    store.create(body(), owner="host")
    store.answer("abc123", {"answer": "v=0 answer", "candidates": [{"candidate": "cc", "sdpMLineIndex": 1}]})
    view = store.get("abc123", "host")
    assert view["status"] == "answered" and view["answer"] == "v=0 answer"
    assert view["client_candidates"] == [{"candidate": "cc", "sdpMLineIndex": 1}]
    store.answer("abc123", {"answer": "second"})  # a retried answer replaces the first
    view = store.get("abc123", "host")
    assert view["answer"] == "second" and "client_candidates" not in view


@pytest.mark.parametrize("payload, message", [
    ({}, "answer is required"),
    ({"answer": 1}, "answer must be a string"),
    ({"answer": ""}, "answer must not be empty"),
    ({"answer": "a", "candidates": "c"}, "candidates must be a list of ICE candidates"),
    ({"answer": "a", "candidates": [{"sdpMid": "0"}]}, "candidates[0].candidate is required"),
])
def test_answer_validation(store, payload, message):
    store.create(body())
    assert status_of(store.answer, "abc123", payload) == (400, message)
    assert store.get("abc123")["status"] == "waiting"


def test_ice_roles(store):
    store.create(body(candidates=[]), owner="host")
    store.add_ice("abc123", {"role": "host", "candidate": {"candidate": "h1", "sdpMid": "0"}})
    store.add_ice("abc123", {"role": "client", "candidate": {"candidate": "c1"}})
    view = store.get("abc123", "host")
    assert view["candidates"] == [{"candidate": "h1", "sdpMid": "0"}]
    assert view["client_candidates"] == [{"candidate": "c1"}]
    assert view["status"] == "waiting"


@pytest.mark.parametrize("payload, message", [
    ({"candidate": {"candidate": "c"}}, "role is required"),
    ({"role": "viewer", "candidate": {"candidate": "c"}}, "role must be 'host' or 'client'"),
    ({"role": 1, "candidate": {"candidate": "c"}}, "role must be 'host' or 'client'"),
    ({"role": "host"}, "candidate is required"),
    ({"role": "host", "candidate": "c"}, "candidate must be an object with a candidate string"),
    ({"role": "host", "candidate": {}}, "candidate.candidate is required"),
    ({"role": "host", "candidate": {"candidate": "c", "sdpMLineIndex": 1.5}},
     "candidate.sdpMLineIndex must be a whole number from 0 to 65535"),
])
def test_ice_validation(store, payload, message):
    store.create(body())
    assert status_of(store.add_ice, "abc123", payload) == (400, message)


def test_ice_candidates_are_bounded(clock):
    store = SessionStore(clock, session_limits(max_candidates=2))
    store.create(body(candidates=[]))
    for _ in range(2):
        store.add_ice("abc123", {"role": "client", "candidate": {"candidate": "c"}})
    code, message = status_of(store.add_ice, "abc123", {"role": "client", "candidate": {"candidate": "c"}})
    assert code == 400 and "2 client candidates" in message
    store.add_ice("abc123", {"role": "host", "candidate": {"candidate": "h"}})


def test_delete(store):
    store.create(body())
    store.delete("abc123")
    assert status_of(store.delete, "abc123") == (404, "session not found")
    assert status_of(store.get, "abc123") == (404, "session not found")
    store.create(body())  # the id is free again


# --- expiry


def test_expired_session_answers_410_everywhere(store, clock):
    store.create(body(ttl=10))
    clock.advance(11)
    assert status_of(store.get, "abc123") == (410, "session expired")
    assert status_of(store.answer, "abc123", {"answer": "a"}) == (410, "session expired")
    assert status_of(store.add_ice, "abc123", {"role": "host", "candidate": {"candidate": "c"}}) == \
        (410, "session expired")
    assert status_of(store.delete, "abc123") == (410, "session expired")


def test_expire_sweep_drops_sessions_and_then_tombstones(store, clock):
    store.create(body("a", ttl=5))
    store.create(body("b", ttl=20))
    assert store.expire() == 0
    clock.advance(6)
    assert store.expire() == 1  # swept by the timer, not only lazily
    assert "a" not in store and "b" in store and len(store) == 1
    assert status_of(store.get, "a") == (410, "session expired")
    clock.advance(S.TOMBSTONE_SECONDS + 30)
    assert store.expire() == 1
    assert len(store) == 0
    assert status_of(store.get, "a") == (404, "session not found")  # the tombstone is gone too
    assert status_of(store.get, "b") == (410, "session expired")


def test_tombstones_are_bounded(store, clock, monkeypatch):
    monkeypatch.setattr(S, "TOMBSTONE_MAX", 3)
    for i in range(5):
        store.create(body(f"s{i}", ttl=1))
    clock.advance(2)
    assert store.expire() == 5
    assert status_of(store.get, "s0")[0] == 404 and status_of(store.get, "s1")[0] == 404
    assert all(status_of(store.get, f"s{i}")[0] == 410 for i in (2, 3, 4))


def test_expiry_heap_survives_churn(store, clock):
    for _ in range(3000):
        store.create(body("x", ttl=3600))
        store.delete("x")
    assert len(store._expiry) <= 2 * len(store) + 1025
    store.create(body("y", ttl=5))
    clock.advance(6)
    assert store.expire() == 1


def test_gauge_tracks_live_sessions(clock):
    recorder = MemoryRecorder()
    store = SessionStore(clock, session_limits(), recorder=recorder)

    def gauge():
        return recorder.sessions_held

    assert gauge() == 0
    store.create(body("a", ttl=5))
    store.create(body("b"), owner="h")
    assert gauge() == 2
    store.delete("b")
    assert gauge() == 1
    clock.advance(6)
    store.expire()
    assert gauge() == 0
    store.create(body("c"), owner="h")
    for _ in range(3):
        store.get("c", "v")
    with pytest.raises(S.TooManyAttempts):
        store.get("c", "v")
    assert gauge() == 0
