"""The blast-radius guard: big drops and empty services are held unless drained."""

from __future__ import annotations

from glassmesh.control.guard import guard

FOUR = [("h1", "a:1"), ("h2", "a:1"), ("h3", "a:1"), ("h4", "a:1")]


def test_small_changes_and_additions_go_out() -> None:
    d = guard({"b": FOUR}, {"b": FOUR[:2] + [("h5", "a:1")]}, max_drop={})
    assert not d.held and d.push["b"] == sorted(FOUR[:2] + [("h5", "a:1")])  # 2 of 4 removed: exactly 50%


def test_more_than_half_at_once_is_held() -> None:
    d = guard({"b": FOUR, "c": FOUR}, {"b": FOUR[:1], "c": FOUR}, max_drop={})
    assert list(d.held) == ["b"]
    assert d.push["b"] == FOUR and d.push["c"] == FOUR  # old endpoints stay; c is untouched
    assert "3 of 4" in d.held["b"].cause and "max_endpoint_drop 50%" in d.held["b"].cause
    assert d.held["b"].new == tuple(FOUR[:1])


def test_per_service_threshold() -> None:
    assert guard({"b": FOUR}, {"b": FOUR[:3]}, max_drop={"b": 0.2}).held
    assert not guard({"b": FOUR}, {"b": FOUR[:1]}, max_drop={"b": 0.9}).held


def test_none_left_is_held_even_under_the_threshold() -> None:
    d = guard({"b": FOUR[:1]}, {"b": []}, max_drop={"b": 1.0})
    assert "every endpoint" in d.held["b"].cause and d.push["b"] == FOUR[:1]


def test_drained_service_may_go_to_none() -> None:
    d = guard({"b": FOUR}, {"b": []}, max_drop={}, drained={"b"})
    assert not d.held and d.push["b"] == []


def test_new_services_and_removed_services_are_not_judged() -> None:
    d = guard({"gone": FOUR}, {"new": FOUR, "empty": []}, max_drop={})
    assert not d.held and set(d.push) == {"new", "empty"}
