"""How keys are carried over a change of warehouse groups (domain/routing.py)."""

from __future__ import annotations

from domain.routing import Carry, KeyTransfer, differ, plan, routes_of


def test_a_reordered_group_moves_its_keys_to_its_new_first_campaign() -> None:
    assert plan(routes_of([[1001, 1002]]), routes_of([[1002, 1001]])) == [
        KeyTransfer(Carry.MOVE, 1001, 1002)
    ]


def test_merged_groups_move_into_the_first_listed_in_the_order_listed() -> None:
    assert plan(routes_of([[1001], [2001]]), routes_of([[3001, 2001, 1001]])) == [
        KeyTransfer(Carry.MOVE, 2001, 3001),
        KeyTransfer(Carry.MOVE, 1001, 3001),
    ]


def test_a_campaign_leaving_to_be_alone_gets_a_copy_of_its_groups_keys() -> None:
    assert plan(routes_of([[1001, 1002]]), routes_of([[1001]])) == [
        KeyTransfer(Carry.COPY, 1001, 1002)
    ]


def test_a_campaign_joining_a_group_with_keys_takes_that_groups_values() -> None:
    assert plan(routes_of([[1001, 1002], [2001]]), routes_of([[1001], [2001, 1002]])) == []


def test_an_unchanged_routing_differs_in_nothing_even_when_written_another_way() -> None:
    assert not differ(routes_of([[1001, 1002], [5]]), routes_of([[1001, 1002]]))
    assert differ(routes_of([[1001, 1002]]), routes_of([[1002, 1001]]))
    assert differ({}, routes_of([[1001, 1002]]))
