"""Unit tests for vebus.events.patterns: EventBridge-style matching over CloudEvents."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import vebus.events.patterns
from vebus.errors import PatternError
from vebus.events.patterns import Explanation, Pattern, compile_pattern

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "veba"


@pytest.fixture(scope="module")
def vm_off() -> dict[str, Any]:
    """The VEBA VmPoweredOffEvent CloudEvent, with data decoded under "data"."""
    event: dict[str, Any] = json.loads(
        (SAMPLES / "veba-VmPoweredOffEvent.json").read_text(encoding="utf-8")
    )
    return event


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    return compile_pattern(pattern).matches(event)


def data(**fields: Any) -> dict[str, Any]:
    """A minimal CloudEvent with the given data fields."""
    return {"type": "com.example.test.v0", "source": "test", "id": "1", "data": fields}


# --- the VEBA sample --------------------------------------------------------------------------


def test_example_route_matches_the_veba_sample(vm_off: dict[str, Any]) -> None:
    pattern = compile_pattern(
        {
            "type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}],
            "data": {"UserName": [{"anything-but": ""}], "Vm": {"Name": ["test-01", "web-02"]}},
        }
    )
    assert pattern.matches(vm_off)
    explanation = pattern.explain(vm_off)
    assert explanation.matched
    assert 'type: matched prefix "com.vmware.vsphere.VmPoweredOff"' in explanation.reason
    assert 'data.Vm.Name: matched "test-01"' in explanation.reason


def test_other_vm_name_does_not_match_the_veba_sample(vm_off: dict[str, Any]) -> None:
    pattern = compile_pattern(
        {
            "type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}],
            "data": {"Vm": {"Name": ["web-01", "web-02"]}},
        }
    )
    assert not pattern.matches(vm_off)
    assert pattern.explain(vm_off) == Explanation(
        matched=False,
        reason='data.Vm.Name: "test-01" does not match one of "web-01", "web-02"',
    )


def test_attributes_and_data_are_anded(vm_off: dict[str, Any]) -> None:
    base = {"source": ["https://10.0.0.1:443/sdk"], "eventclass": ["event"]}
    assert matches({**base, "data": {"Template": [False]}}, vm_off)
    assert not matches({**base, "data": {"Template": [True]}}, vm_off)
    assert not matches({**base, "eventclass": ["eventex"]}, vm_off)


def test_empty_user_name_is_excluded_by_anything_but(vm_off: dict[str, Any]) -> None:
    event = copy.deepcopy(vm_off)
    event["data"]["UserName"] = ""
    pattern = compile_pattern({"data": {"UserName": [{"anything-but": ""}]}})
    assert pattern.explain(event) == Explanation(
        matched=False, reason='data.UserName: "" is excluded by anything-but'
    )


def test_managed_object_reference_two_levels_down(vm_off: dict[str, Any]) -> None:
    assert matches(
        {"data": {"Vm": {"Vm": {"Type": ["VirtualMachine"], "Value": ["vm-56"]}}}}, vm_off
    )
    assert not matches({"data": {"Host": {"Host": {"Value": ["host-22"]}}}}, vm_off)


# --- exact match ------------------------------------------------------------------------------


def test_exact_string_is_case_sensitive() -> None:
    assert matches({"data": {"s": ["Web"]}}, data(s="Web"))
    assert not matches({"data": {"s": ["Web"]}}, data(s="web"))
    assert not matches({"data": {"s": ["Web"]}}, data(s="Web-01"))


def test_exact_alternatives_are_ored() -> None:
    pattern = {"data": {"s": ["a", "b", 3]}}
    assert matches(pattern, data(s="b"))
    assert matches(pattern, data(s=3))
    assert not matches(pattern, data(s="c"))


def test_exact_numbers_compare_numerically() -> None:
    assert matches({"data": {"n": [5]}}, data(n=5.0))
    assert matches({"data": {"n": [5.0]}}, data(n=5))
    assert matches({"data": {"n": [300]}}, data(n=3.0e2))
    assert not matches({"data": {"n": [5]}}, data(n=5.5))
    assert not matches({"data": {"n": [5]}}, data(n="5"))
    assert not matches({"data": {"s": ["5"]}}, data(s=5))


def test_exact_booleans_are_not_numbers_or_strings() -> None:
    assert matches({"data": {"b": [True]}}, data(b=True))
    assert not matches({"data": {"b": [True]}}, data(b=False))
    assert not matches({"data": {"b": [True]}}, data(b=1))
    assert not matches({"data": {"b": [1]}}, data(b=True))
    assert not matches({"data": {"b": [0]}}, data(b=False))
    assert not matches({"data": {"b": ["true"]}}, data(b=True))


def test_null_exact_match(vm_off: dict[str, Any]) -> None:
    assert matches({"data": {"Ds": [None]}}, vm_off)
    assert not matches({"data": {"Vm": {"Name": [None]}}}, vm_off)
    # null matches a null value, not an absent field, not an empty string
    assert not matches({"data": {"Absent": [None]}}, vm_off)
    assert not matches({"data": {"ChangeTag": [None]}}, vm_off)
    assert matches({"data": {"ChangeTag": [""]}}, vm_off)


def test_missing_field_never_matches_a_value() -> None:
    pattern = compile_pattern({"data": {"UserName": ["root"]}})
    event = data(Other="root")
    assert not pattern.matches(event)
    assert pattern.explain(event).reason == 'data.UserName: field is absent; expected "root"'


def test_missing_data_and_non_object_event_parts() -> None:
    pattern = {"data": {"Vm": {"Name": ["web-01"]}}}
    assert not matches(pattern, {"type": "t"})
    assert not matches(pattern, {"type": "t", "data": None})
    assert not matches(pattern, {"type": "t", "data": "text payload"})
    assert not matches(pattern, data(Vm=None))


def test_leaf_on_an_object_does_not_match_a_value(vm_off: dict[str, Any]) -> None:
    pattern = compile_pattern({"data": {"Vm": ["test-01"]}})
    assert not pattern.matches(vm_off)
    assert "data.Vm: is an object, not a value" in pattern.explain(vm_off).reason


# --- prefix, suffix, equals-ignore-case, wildcard ---------------------------------------------


def test_prefix() -> None:
    pattern = {"type": [{"prefix": "com.vmware.vsphere."}]}
    assert matches(pattern, {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0"})
    assert not matches(pattern, {"type": "com.vmware.vsphereX"})
    assert not matches(pattern, {"type": "io.vebus.com.vmware.vsphere."})
    assert not matches(pattern, {"other": "com.vmware.vsphere.x"})


def test_prefix_matches_strings_only() -> None:
    assert not matches({"data": {"n": [{"prefix": "12"}]}}, data(n=123))
    assert not matches({"data": {"n": [{"prefix": "nu"}]}}, data(n=None))


def test_prefix_equals_ignore_case() -> None:
    pattern = {"subject": [{"prefix": {"equals-ignore-case": "vmpowered"}}]}
    assert matches(pattern, {"subject": "VmPoweredOffEvent"})
    assert matches(pattern, {"subject": "VMPOWEREDONEvent"})
    assert not matches(pattern, {"subject": "DrsVmPoweredOnEvent"})


def test_suffix() -> None:
    pattern = {"type": [{"suffix": "Event.v0"}]}
    assert matches(pattern, {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0"})
    assert not matches(pattern, {"type": "com.vmware.vsphere.VmPoweredOffEvent.v1"})
    assert not matches(pattern, {"type": "com.vmware.vsphere.VmPoweredOffevent.v0"})


def test_suffix_equals_ignore_case() -> None:
    pattern = {"data": {"File": [{"suffix": {"equals-ignore-case": ".VMX"}}]}}
    assert matches(pattern, data(File="web-01.vmx"))
    assert matches(pattern, data(File="web-01.VmX"))
    assert not matches(pattern, data(File="web-01.vmdk"))


def test_equals_ignore_case() -> None:
    pattern = {"data": {"UserName": [{"equals-ignore-case": "vsphere.local\\administrator"}]}}
    assert matches(pattern, data(UserName="VSPHERE.LOCAL\\Administrator"))
    assert not matches(pattern, data(UserName="VSPHERE.LOCAL\\Administrators"))
    assert not matches({"data": {"n": [{"equals-ignore-case": "1"}]}}, data(n=1))


def test_wildcard() -> None:
    pattern = {"type": [{"wildcard": "com.vmware.vsphere.Vm*Event.v0"}]}
    assert matches(pattern, {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0"})
    assert matches(pattern, {"type": "com.vmware.vsphere.VmEvent.v0"})
    assert not matches(pattern, {"type": "com.vmware.vsphere.HostEvent.v0"})
    # the whole value must match, and "." is literal
    assert not matches(pattern, {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0.extra"})
    assert not matches({"data": {"s": [{"wildcard": "a.c"}]}}, data(s="abc"))
    assert not matches({"data": {"n": [{"wildcard": "*"}]}}, data(n=5))
    assert matches({"data": {"s": [{"wildcard": "*"}]}}, data(s=""))


def test_wildcard_escapes_star_and_backslash() -> None:
    star = {"data": {"s": [{"wildcard": "a\\*b*"}]}}
    assert matches(star, data(s="a*bcd"))
    assert not matches(star, data(s="axbcd"))
    backslash = {"data": {"UserName": [{"wildcard": "VSPHERE.LOCAL\\\\*"}]}}
    assert matches(backslash, data(UserName="VSPHERE.LOCAL\\Administrator"))
    assert not matches(backslash, data(UserName="VSPHERE.LOCAL/Administrator"))


def test_wildcard_spans_newlines() -> None:
    assert matches({"data": {"m": [{"wildcard": "*powered off*"}]}}, data(m="x\nis powered off\n"))


# --- anything-but -----------------------------------------------------------------------------


def test_anything_but_string() -> None:
    pattern = {"data": {"UserName": [{"anything-but": ""}]}}
    assert matches(pattern, data(UserName="root"))
    assert not matches(pattern, data(UserName=""))


def test_anything_but_does_not_match_an_absent_field() -> None:
    pattern = compile_pattern({"data": {"UserName": [{"anything-but": ""}]}})
    assert not pattern.matches(data(Other="x"))
    assert not pattern.matches({"type": "t"})
    assert pattern.explain(data()).reason == (
        'data.UserName: field is absent; expected anything-but ""'
    )


def test_anything_but_matches_values_of_other_types() -> None:
    pattern = {"data": {"v": [{"anything-but": ["a", "b"]}]}}
    assert matches(pattern, data(v=None))
    assert matches(pattern, data(v=5))
    assert matches(pattern, data(v=False))
    assert matches({"data": {"v": [{"anything-but": 5}]}}, data(v="5"))


def test_anything_but_string_list() -> None:
    pattern = {"data": {"State": [{"anything-but": ["poweredOff", "suspended"]}]}}
    assert matches(pattern, data(State="poweredOn"))
    assert not matches(pattern, data(State="poweredOff"))
    assert not matches(pattern, data(State="suspended"))


def test_anything_but_numbers_compare_numerically() -> None:
    pattern = {"data": {"n": [{"anything-but": [100, 200]}]}}
    assert matches(pattern, data(n=150))
    assert not matches(pattern, data(n=100))
    assert not matches(pattern, data(n=200.0))
    assert not matches({"data": {"n": [{"anything-but": 1.5}]}}, data(n=1.5))


def test_anything_but_prefix() -> None:
    pattern = {"data": {"UserName": [{"anything-but": {"prefix": "VSPHERE.LOCAL\\"}}]}}
    assert matches(pattern, data(UserName="CORP\\alice"))
    assert not matches(pattern, data(UserName="VSPHERE.LOCAL\\Administrator"))
    assert matches(pattern, data(UserName=None))
    assert not matches(pattern, data())
    reason = compile_pattern(pattern).explain(data(UserName="VSPHERE.LOCAL\\x")).reason
    assert reason == (
        'data.UserName: "VSPHERE.LOCAL\\\\x" is excluded by anything-but prefix "VSPHERE.LOCAL\\\\"'
    )


def test_anything_but_suffix() -> None:
    pattern = {"data": {"File": [{"anything-but": {"suffix": ".log"}}]}}
    assert matches(pattern, data(File="vmware.vmx"))
    assert not matches(pattern, data(File="vmware.log"))


def test_anything_but_equals_ignore_case() -> None:
    single = {"data": {"s": [{"anything-but": {"equals-ignore-case": "GREEN"}}]}}
    assert matches(single, data(s="red"))
    assert not matches(single, data(s="Green"))
    listed = {"data": {"s": [{"anything-but": {"equals-ignore-case": ["green", "GRAY"]}}]}}
    assert matches(listed, data(s="red"))
    assert not matches(listed, data(s="gray"))
    assert not matches(listed, data(s="GREEN"))


def test_anything_but_wildcard() -> None:
    pattern = {"data": {"Path": [{"anything-but": {"wildcard": "*/lib/*"}}]}}
    assert matches(pattern, data(Path="/usr/bin/x"))
    assert not matches(pattern, data(Path="/usr/lib/x"))


# --- exists -----------------------------------------------------------------------------------


def test_exists_true(vm_off: dict[str, Any]) -> None:
    assert matches({"data": {"UserName": [{"exists": True}]}}, vm_off)
    assert matches({"data": {"ChangeTag": [{"exists": True}]}}, vm_off)  # ""
    assert matches({"data": {"Ds": [{"exists": True}]}}, vm_off)  # null is a value
    assert not matches({"data": {"Absent": [{"exists": True}]}}, vm_off)


def test_exists_false(vm_off: dict[str, Any]) -> None:
    pattern = compile_pattern({"data": {"Absent": [{"exists": False}]}})
    assert pattern.matches(vm_off)
    assert pattern.explain(vm_off).reason == "data.Absent: absent (exists false)"
    present = compile_pattern({"data": {"UserName": [{"exists": False}]}})
    assert not present.matches(vm_off)
    assert present.explain(vm_off).reason == (
        'data.UserName: "VSPHERE.LOCAL\\\\Administrator" is present (expected exists false)'
    )


def test_exists_false_when_a_parent_is_missing_or_null(vm_off: dict[str, Any]) -> None:
    assert matches({"data": {"Ds": {"Name": [{"exists": False}]}}}, vm_off)
    assert matches({"data": {"Nope": {"Name": [{"exists": False}]}}}, vm_off)
    assert not matches({"data": {"Nope": {"Name": [{"exists": True}]}}}, vm_off)


def test_exists_only_sees_leaves(vm_off: dict[str, Any]) -> None:
    # as in EventBridge: an object is not a leaf, so the field "does not exist"
    assert not matches({"data": {"Vm": [{"exists": True}]}}, vm_off)
    assert matches({"data": {"Vm": [{"exists": False}]}}, vm_off)


def test_exists_and_empty_arrays() -> None:
    assert not matches({"data": {"tags": [{"exists": True}]}}, data(tags=[]))
    assert matches({"data": {"tags": [{"exists": False}]}}, data(tags=[]))
    assert matches({"data": {"tags": [{"exists": True}]}}, data(tags=["a"]))


def test_exists_or_value_in_one_leaf() -> None:
    pattern = {"data": {"UserName": ["root", {"exists": False}]}}
    assert matches(pattern, data(UserName="root"))
    assert matches(pattern, data())
    assert not matches(pattern, data(UserName="alice"))


# --- numeric ----------------------------------------------------------------------------------


def test_numeric_range(vm_off: dict[str, Any]) -> None:
    assert matches({"data": {"Key": [{"numeric": [">", 9000, "<=", 9902]}]}}, vm_off)
    assert not matches({"data": {"Key": [{"numeric": [">", 9000, "<", 9902]}]}}, vm_off)


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        (["=", 5], 5, True),
        (["=", 5], 5.0, True),
        (["=", 5.0], 5, True),
        (["=", 5], 5.000001, False),
        ([">", 5], 5, False),
        ([">", 5], 5.0000001, True),
        ([">=", 5], 5, True),
        ([">=", 5], 4.999, False),
        (["<", 5], 5, False),
        (["<", 5], 4.5, True),
        (["<=", 5], 5.0, True),
        (["<=", 5], 6, False),
        ([">", 0, "<=", 5], 0, False),
        ([">", 0, "<=", 5], 0.5, True),
        ([">", 0, "<=", 5], 5, True),
        ([">", 0, "<=", 5], 5.5, False),
        ([">=", 0, "<", 5], 0, True),
        ([">=", 0, "<", 5], 5, False),
        ([">=", -1.5, "<", -1], -1.5, True),
        (["<", 3.018e2], 301.8, False),
        ([">", 2147483647], 2147483648, True),
    ],
)
def test_numeric_bounds(spec: list[Any], value: float, expected: bool) -> None:
    assert matches({"data": {"n": [{"numeric": spec}]}}, data(n=value)) is expected


def test_numeric_matches_json_numbers_only() -> None:
    pattern = {"data": {"n": [{"numeric": [">=", 0]}]}}
    assert not matches(pattern, data(n="5"))
    assert not matches(pattern, data(n=True))
    assert not matches(pattern, data(n=None))
    assert not matches(pattern, data())
    assert not matches(pattern, data(n=float("nan")))


def test_numeric_reason() -> None:
    pattern = compile_pattern({"data": {"n": [{"numeric": [">", 0, "<=", 5]}]}})
    assert pattern.explain(data(n=7)).reason == "data.n: 7 does not match numeric > 0 and <= 5"
    assert pattern.explain(data(n=3)).reason == "data.n: matched numeric > 0 and <= 5"


# --- cidr -------------------------------------------------------------------------------------


def test_cidr_ipv4(vm_off: dict[str, Any]) -> None:
    assert matches({"data": {"Host": {"Name": [{"cidr": "10.185.0.0/16"}]}}}, vm_off)
    assert not matches({"data": {"Host": {"Name": [{"cidr": "10.186.0.0/16"}]}}}, vm_off)
    assert matches({"data": {"Host": {"Name": [{"cidr": "10.185.22.74"}]}}}, vm_off)


def test_cidr_ipv6() -> None:
    pattern = {"data": {"ip": [{"cidr": "2001:db8::/32"}]}}
    assert matches(pattern, data(ip="2001:db8::1"))
    assert matches(pattern, data(ip="2001:0DB8:0000::ff"))
    assert not matches(pattern, data(ip="2001:db9::1"))
    assert not matches(pattern, data(ip="10.0.0.1"))


def test_cidr_ignores_non_addresses() -> None:
    pattern = {"data": {"ip": [{"cidr": "10.0.0.0/8"}]}}
    assert not matches(pattern, data(ip="esx-01.example.com"))
    assert not matches(pattern, data(ip="10.0.0.0/8"))
    assert not matches(pattern, data(ip=167772161))


# --- arrays in the event ----------------------------------------------------------------------


def test_array_value_matches_if_any_element_matches() -> None:
    assert matches({"data": {"tags": ["prod"]}}, data(tags=["dev", "prod"]))
    assert not matches({"data": {"tags": ["prod"]}}, data(tags=["dev", "test"]))
    assert matches({"data": {"n": [{"numeric": [">", 10]}]}}, data(n=[1, 2, 30]))
    assert matches({"data": {"tags": [{"prefix": "pr"}]}}, data(tags=[["dev"], ["prod"]]))


def test_array_value_with_anything_but_needs_one_other_element() -> None:
    pattern = {"data": {"tags": [{"anything-but": "dev"}]}}
    assert matches(pattern, data(tags=["dev", "prod"]))
    assert not matches(pattern, data(tags=["dev", "dev"]))
    assert not matches(pattern, data(tags=[]))


def test_nested_pattern_over_an_array_of_objects() -> None:
    event = data(
        Disks=[
            {"Label": "Hard disk 1", "CapacityGB": 40},
            {"Label": "Hard disk 2", "CapacityGB": 500},
        ]
    )
    assert matches({"data": {"Disks": {"CapacityGB": [{"numeric": [">", 100]}]}}}, event)
    # fields of one nested object must hold in the same element
    same = {"Label": ["Hard disk 2"], "CapacityGB": [{"numeric": [">", 100]}]}
    other = {"Label": ["Hard disk 1"], "CapacityGB": [{"numeric": [">", 100]}]}
    assert matches({"data": {"Disks": same}}, event)
    pattern = compile_pattern({"data": {"Disks": other}})
    assert not pattern.matches(event)
    assert pattern.explain(event).reason.startswith("data.Disks: no element of the array matched")


# --- nested objects ---------------------------------------------------------------------------


def test_nested_objects_descend(vm_off: dict[str, Any]) -> None:
    pattern = {
        "data": {
            "Datacenter": {"Name": ["testDC"]},
            "ComputeResource": {"ComputeResource": {"Type": ["ClusterComputeResource"]}},
        }
    }
    assert matches(pattern, vm_off)
    assert not matches({"data": {"Datacenter": {"Name": ["prodDC"]}}}, vm_off)


def test_nested_pattern_over_a_scalar_or_null(vm_off: dict[str, Any]) -> None:
    assert not matches({"data": {"Ds": {"Name": ["ds-01"]}}}, vm_off)
    assert not matches({"data": {"UserName": {"Name": ["x"]}}}, vm_off)


# --- $or --------------------------------------------------------------------------------------


def test_or_at_top_level(vm_off: dict[str, Any]) -> None:
    pattern = compile_pattern(
        {
            "$or": [
                {"type": [{"prefix": "com.vmware.vsphere.VmPoweredOn"}]},
                {"data": {"Vm": {"Name": ["test-01"]}}},
            ]
        }
    )
    assert pattern.matches(vm_off)
    assert pattern.explain(vm_off).reason == '$or[1]: data.Vm.Name: matched "test-01"'


def test_or_is_anded_with_sibling_fields(vm_off: dict[str, Any]) -> None:
    both = {
        "eventclass": ["event"],
        "$or": [{"data": {"UserName": ["root"]}}, {"data": {"Template": [False]}}],
    }
    assert matches(both, vm_off)
    assert not matches({**both, "eventclass": ["eventex"]}, vm_off)


def test_or_nested_inside_data(vm_off: dict[str, Any]) -> None:
    pattern = compile_pattern(
        {
            "data": {
                "$or": [
                    {"Host": {"Name": [{"cidr": "192.168.0.0/16"}]}},
                    {"Key": [{"numeric": ["<", 100]}]},
                    {"Datacenter": {"Name": ["otherDC"]}},
                ]
            }
        }
    )
    assert not pattern.matches(vm_off)
    reason = pattern.explain(vm_off).reason
    assert reason.startswith("no $or alternative matched: [0] data.Host.Name:")
    assert "[1] data.Key: 9902 does not match numeric < 100" in reason
    event = copy.deepcopy(vm_off)
    event["data"]["Datacenter"]["Name"] = "otherDC"
    assert pattern.matches(event)


def test_or_with_an_and_inside() -> None:
    pattern = {
        "$or": [
            {"data": {"a": [1], "b": [2]}},
            {"data": {"c": [3]}},
        ]
    }
    assert matches(pattern, data(a=1, b=2))
    assert not matches(pattern, data(a=1, b=3))
    assert matches(pattern, data(a=1, b=3, c=3))


# --- explain ----------------------------------------------------------------------------------


def test_explain_agrees_with_matches(vm_off: dict[str, Any]) -> None:
    patterns: list[dict[str, Any]] = [
        {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]},
        {"data": {"Key": [{"numeric": [">", 10000]}]}},
        {"data": {"Vm": {"Name": [{"wildcard": "test-*"}]}}, "source": [{"suffix": "/sdk"}]},
        {"$or": [{"subject": ["x"]}, {"id": [{"exists": True}]}]},
    ]
    for raw in patterns:
        pattern = compile_pattern(raw)
        assert pattern.explain(vm_off).matched is pattern.matches(vm_off)


def test_explain_names_the_first_failing_field(vm_off: dict[str, Any]) -> None:
    pattern = compile_pattern(
        {"type": [{"prefix": "com.vmware.vsphere.Vm"}], "data": {"UserName": ["root"]}}
    )
    assert pattern.explain(vm_off).reason == (
        'data.UserName: "VSPHERE.LOCAL\\\\Administrator" does not match "root"'
    )


def test_explain_lists_alternatives_for_an_array_value() -> None:
    pattern = compile_pattern({"data": {"tags": ["prod", {"prefix": "live-"}]}})
    assert pattern.explain(data(tags=["dev", "test"])).reason == (
        'data.tags: ["dev", "test"] matches none of: "prod", prefix "live-"'
    )


# --- invalid patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "message"),
    [
        pytest.param(
            {"data": {"Vm": [{"prefx": "web"}]}},
            "match.data.Vm[0]",
            'unknown operator "prefx" (expected one of: prefix, suffix, anything-but,',
            id="unknown-operator",
        ),
        pytest.param(
            {"data": {"Vm": {"Name": []}}},
            "match.data.Vm.Name",
            "expected a non-empty array of values",
            id="empty-leaf",
        ),
        pytest.param(
            {"data": {"Vm": {"Name": [{"numeric": ["=>", 5]}]}}},
            "match.data.Vm.Name[0].numeric",
            'unknown numeric operator "=>" at position 0 (expected one of: =, >, >=, <, <=)',
            id="numeric-bad-operator",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": [">", 0, ">", 5]}]}},
            "match.data.n[0].numeric",
            'a range ends with "<" or "<=", got ">"',
            id="numeric-two-lower-bounds",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": ["<", 5, ">", 0]}]}},
            "match.data.n[0].numeric",
            'a range starts with ">" or ">=", got "<"',
            id="numeric-upper-first",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": [">", 5, "<", 5]}]}},
            "match.data.n[0].numeric",
            "the lower bound 5 must be less than the upper bound 5",
            id="numeric-empty-range",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": [">=", 5, "<=", 5]}]}},
            "match.data.n[0].numeric",
            "the lower bound 5 must be less than the upper bound 5",
            id="numeric-equal-bounds",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": [">", "5"]}]}},
            "match.data.n[0].numeric",
            'expected a number after ">", got "5"',
            id="numeric-string-operand",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": ["=", True]}]}},
            "match.data.n[0].numeric",
            'expected a number after "=", got true',
            id="numeric-boolean-operand",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": [">", 1, "<", 5, "<", 6]}]}},
            "match.data.n[0].numeric",
            "got 6 item(s)",
            id="numeric-too-long",
        ),
        pytest.param(
            {"data": {"n": [{"numeric": 5}]}},
            "match.data.n[0].numeric",
            'expected an array like [">", 0, "<=", 5], got 5',
            id="numeric-not-array",
        ),
        pytest.param(
            {"data": {"Vm": {"Name": "web-01"}}},
            "match.data.Vm.Name",
            'expected an array of values or a nested object, got "web-01"'
            ' (to match it exactly, write ["web-01"])',
            id="leaf-not-array",
        ),
        pytest.param(
            {"data": {"Key": 9902}},
            "match.data.Key",
            "expected an array of values or a nested object, got 9902",
            id="leaf-number-not-array",
        ),
        pytest.param({}, "match", "expected a non-empty object", id="empty-pattern"),
        pytest.param(
            {"data": {}}, "match.data", "expected a non-empty object", id="empty-nested-object"
        ),
        pytest.param(
            {"data": {"s": [["a"]]}},
            "match.data.s[0]",
            "got an array",
            id="array-in-leaf",
        ),
        pytest.param(
            {"data": {"s": [float("nan")]}},
            "match.data.s[0]",
            "expected a string, a finite number, true, false, null or an operator object",
            id="nan-value",
        ),
        pytest.param(
            {"data": {"s": [{"prefix": "a", "suffix": "b"}]}},
            "match.data.s[0]",
            'an operator object has exactly one key, got "prefix", "suffix"',
            id="two-operators-in-one-object",
        ),
        pytest.param(
            {"data": {"s": [{}]}},
            "match.data.s[0]",
            "an operator object has exactly one key, got none",
            id="empty-operator-object",
        ),
        pytest.param(
            {"type": [{"prefix": 5}]},
            "match.type[0].prefix",
            "expected a string, got 5",
            id="prefix-not-string",
        ),
        pytest.param(
            {"type": [{"prefix": {"equals-ignore-case": 5}}]},
            "match.type[0].prefix.equals-ignore-case",
            "expected a string, got 5",
            id="prefix-ignore-case-not-string",
        ),
        pytest.param(
            {"type": [{"suffix": {"exact": "x"}}]},
            "match.type[0].suffix",
            'expected a string or {"equals-ignore-case": string}',
            id="suffix-bad-object",
        ),
        pytest.param(
            {"type": [{"equals-ignore-case": ["a"]}]},
            "match.type[0].equals-ignore-case",
            "expected a string, got an array",
            id="equals-ignore-case-list",
        ),
        pytest.param(
            {"type": [{"exists": "yes"}]},
            "match.type[0].exists",
            'expected true or false, got "yes"',
            id="exists-not-boolean",
        ),
        pytest.param(
            {"type": [{"wildcard": "com.**"}]},
            "match.type[0].wildcard",
            'consecutive wildcard characters at position 4 of "com.**"',
            id="wildcard-double-star",
        ),
        pytest.param(
            {"type": [{"wildcard": "a\\b"}]},
            "match.type[0].wildcard",
            "invalid escape at position 1",
            id="wildcard-bad-escape",
        ),
        pytest.param(
            {"ip": [{"cidr": "10.0.0.0/33"}]},
            "match.ip[0].cidr",
            'expected an IPv4 or IPv6 network like "10.0.0.0/24", got "10.0.0.0/33"',
            id="cidr-invalid",
        ),
        pytest.param(
            {"s": [{"anything-but": []}]},
            "match.s[0].anything-but",
            "expected a non-empty array of strings or of numbers",
            id="anything-but-empty-list",
        ),
        pytest.param(
            {"s": [{"anything-but": ["a", 1]}]},
            "match.s[0].anything-but",
            "expected only strings or only numbers",
            id="anything-but-mixed-list",
        ),
        pytest.param(
            {"s": [{"anything-but": [None]}]},
            "match.s[0].anything-but[0]",
            "expected a string or a number, got null",
            id="anything-but-null-in-list",
        ),
        pytest.param(
            {"s": [{"anything-but": True}]},
            "match.s[0].anything-but",
            "got true",
            id="anything-but-boolean",
        ),
        pytest.param(
            {"s": [{"anything-but": {"numeric": [">", 1]}}]},
            "match.s[0].anything-but",
            "an object with one of: prefix, suffix, equals-ignore-case, wildcard",
            id="anything-but-unsupported-operator",
        ),
        pytest.param(
            {"s": [{"anything-but": {"prefix": ""}}]},
            "match.s[0].anything-but.prefix",
            'expected a non-empty prefix, got ""',
            id="anything-but-empty-prefix",
        ),
        pytest.param(
            {"s": [{"anything-but": {"equals-ignore-case": ["a", 2]}}]},
            "match.s[0].anything-but.equals-ignore-case[1]",
            "expected a string, got 2",
            id="anything-but-ignore-case-number",
        ),
        pytest.param(
            {"$or": [{"type": ["a"]}]},
            "match.$or",
            "expected an array of at least two sub-patterns, got 1 item(s)",
            id="or-single",
        ),
        pytest.param(
            {"$or": {"type": ["a"]}},
            "match.$or",
            "expected an array of at least two sub-patterns, got an object",
            id="or-not-array",
        ),
        pytest.param(
            {"data": {"$or": [{"a": ["x"]}, {"b": "y"}]}},
            "match.data.$or[1].b",
            "expected an array of values or a nested object",
            id="or-bad-branch",
        ),
        pytest.param(
            {"$or": [{"a": ["x"]}, []]},
            "match.$or[1]",
            "expected an object of fields, got an array",
            id="or-branch-not-object",
        ),
    ],
)
def test_invalid_pattern(pattern: Any, path: str, message: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern(pattern)
    assert caught.value.path == path
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("pattern", "got"),
    [
        pytest.param(["type"], "an array", id="array"),
        pytest.param("type", '"type"', id="string"),
        pytest.param(None, "null", id="null"),
    ],
)
def test_pattern_must_be_an_object(pattern: Any, got: str) -> None:
    with pytest.raises(PatternError, match=f"^match: expected an object of fields, got {got}$"):
        compile_pattern(pattern)


def test_error_path_starts_from_the_given_prefix() -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern({"data": {"Vm": [{"prefx": "web"}]}}, path="routes[2].match")
    assert caught.value.path == "routes[2].match.data.Vm[0]"
    assert str(caught.value) == (
        'routes[2].match.data.Vm[0]: unknown operator "prefx" (expected one of: prefix, suffix,'
        " anything-but, equals-ignore-case, wildcard, numeric, exists, cidr)"
    )


def test_pattern_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="non-empty array"):
        compile_pattern({"type": []})


def test_first_problem_is_reported() -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern({"type": [{"prefix": 1}], "data": {"Vm": []}})
    assert caught.value.path == "match.type[0].prefix"


# --- the compiled pattern ---------------------------------------------------------------------


def test_compiled_pattern_is_immutable_and_independent_of_its_source(
    vm_off: dict[str, Any],
) -> None:
    source: dict[str, Any] = {"data": {"Vm": {"Name": ["test-01"]}}}
    pattern = compile_pattern(source)
    source["data"]["Vm"]["Name"] = ["other"]
    assert pattern.matches(vm_off)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pattern.path = "x"  # type: ignore[misc]
    assert isinstance(pattern, Pattern)


def test_explanation_is_immutable() -> None:
    explanation = Explanation(matched=True, reason="r")
    with pytest.raises(dataclasses.FrozenInstanceError):
        explanation.matched = False  # type: ignore[misc]


def test_public_names() -> None:
    assert set(vebus.events.patterns.__all__) == {
        "OPERATORS",
        "Explanation",
        "Pattern",
        "PatternIndex",
        "compile_pattern",
        "explain_match",
    }


def test_explain_match_says_what_routes_test_prints() -> None:
    from vebus.events.patterns import explain_match

    event = {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0", "data": {"UserName": "bob"}}
    everything = explain_match(None, event)
    assert everything.matched
    assert everything.lines("route all") == [
        "matched: route all has no match, so it takes every event"
    ]
    miss = explain_match(compile_pattern({"data": {"UserName": ["alice"]}}), event)
    assert not miss.matched
    assert miss.lines("pattern")[0] == "no match: pattern"
    assert "UserName" in miss.lines("pattern")[1]
