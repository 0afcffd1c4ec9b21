"""PatternIndex: many patterns compiled into one index, same answers as each pattern alone."""

from __future__ import annotations

from typing import Any

from vebus.events.patterns import PatternIndex, compile_pattern


def build(*patterns: dict[str, Any] | None) -> PatternIndex[int]:
    return PatternIndex(
        (i, None if p is None else compile_pattern(p)) for i, p in enumerate(patterns)
    )


def test_results_keep_the_order_given_and_none_matches_all() -> None:
    index = build({"type": ["b"]}, None, {"type": [{"prefix": "b"}]}, {"type": ["a"]})
    assert index.matching({"type": "b"}) == [0, 1, 2]
    assert index.matching({"type": "a"}) == [1, 3]
    assert index.matching({}) == [1]
    assert len(index) == 4


def test_a_thousand_exact_routes_leave_one_candidate() -> None:
    index = build(
        *(
            {"type": [f"com.vmware.vsphere.Event{i}.v0"], "data": {"Key": [{"numeric": [">", 0]}]}}
            for i in range(1000)
        )
    )
    assert index.indexed == 1000
    event = {"type": "com.vmware.vsphere.Event417.v0", "data": {"Key": 5}}
    assert index.candidates(event) == [417]
    assert index.matching(event) == [417]
    assert index.matching({**event, "data": {"Key": 0}}) == []


def test_the_most_selective_field_is_the_key() -> None:
    # `exists` and numeric ranges only narrow to "present": the exact Vm name is chosen
    index = build(
        *({"data": {"Key": [{"exists": True}], "Vm": {"Name": [f"vm-{i}"]}}} for i in range(50))
    )
    assert index.candidates({"data": {"Key": 1, "Vm": {"Name": "vm-7"}}}) == [7]


def test_prefix_suffix_and_case_folded_keys() -> None:
    index = build(
        {"s": [{"prefix": "com.vmware."}]},
        {"s": [{"prefix": "com."}]},
        {"s": [{"prefix": ""}]},
        {"s": [{"suffix": ".v0"}]},
        {"s": [{"suffix": {"equals-ignore-case": ".V0"}}]},
        {"s": [{"prefix": {"equals-ignore-case": "COM.VMWARE"}}]},
        {"s": [{"equals-ignore-case": "COM.VMWARE.X.V0"}]},
        {"s": [{"wildcard": "com.*.v1"}]},
        {"s": [{"wildcard": "*.v0"}]},
    )
    assert index.matching({"s": "com.vmware.x.v0"}) == [0, 1, 2, 3, 4, 5, 6, 8]
    assert index.matching({"s": "COM.VMWARE.X.V0"}) == [2, 4, 5, 6]
    assert index.matching({"s": "com.a.v1"}) == [1, 2, 7]
    assert index.matching({"s": ""}) == [2]
    assert index.matching({"s": 5}) == []


def test_values_of_every_type_are_told_apart() -> None:
    index = build(
        {"v": [1]}, {"v": [True]}, {"v": [None]}, {"v": ["1"]}, {"v": [{"numeric": ["=", 1]}]}
    )
    assert index.matching({"v": 1.0}) == [0, 4]
    assert index.matching({"v": True}) == [1]
    assert index.matching({"v": None}) == [2]
    assert index.matching({"v": "1"}) == [3]
    assert index.matching({"v": [1, "1"]}) == [0, 3, 4]


def test_or_branches_each_give_a_key() -> None:
    index = build(
        {"$or": [{"type": ["a"]}, {"data": {"Vm": {"Name": ["web"]}}}]},
        {"$or": [{"type": ["b"]}, {"data": {"x": [{"exists": False}]}}]},
    )
    assert index.indexed == 1  # the second has a branch that an absent field satisfies
    assert index.matching({"type": "a", "data": {"x": 1}}) == [0]
    assert index.matching({"type": "c", "data": {"Vm": [{"Name": "web"}]}}) == [0, 1]
    assert index.matching({"type": "c", "data": {"x": 1}}) == []


def test_keys_inside_arrays_of_objects() -> None:
    index = build(
        {"data": {"Disks": {"Label": ["data"], "GB": [{"numeric": [">", 100]}]}}},
        {"data": {"Disks": {"Label": ["root"]}}},
    )
    event = {"data": {"Disks": [{"Label": "root", "GB": 500}, [{"Label": "data", "GB": 40}]]}}
    assert index.candidates(event) == [0, 1]
    assert index.matching(event) == [1]  # "data" and > 100 are in different elements


def test_patterns_without_a_key_are_always_evaluated() -> None:
    index = build({"a": [{"exists": False}]}, {"a": [{"anything-but": "x"}]}, {"b": ["y"]})
    assert index.indexed == 2
    assert index.matching({}) == [0]
    assert index.matching({"a": "z"}) == [1]
    assert index.matching({"a": "x", "b": "y"}) == [2]
