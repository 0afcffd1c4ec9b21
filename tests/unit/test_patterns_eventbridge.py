"""Every operator against the examples and edge cases of EventBridge's documentation.

The events and patterns follow "Amazon EventBridge event patterns" and "Content filtering
in Amazon EventBridge event patterns" (numeric bounds, empty strings, null versus missing,
arrays and arrays of objects, anything-but lists, $or). Each case is checked three ways: the
compiled pattern, its explanation, and a PatternIndex holding it among decoys.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vebus.events.patterns import PatternIndex, compile_pattern

EC2_EVENT: dict[str, Any] = {
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "111122223333",
    "time": "2017-12-22T18:43:48Z",
    "region": "us-west-1",
    "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
    "detail": {
        "instance-id": "i-1234567890abcdef0",
        "state": "terminated",
        "c-count": 5,
        "d-count": 7,
        "x-limit": 301.8,
        "source-ip": "10.0.0.123",
        "FileName": "photo.png",
        "eventVersion": "",
        "responseElements": None,
        "tags": ["prod", "web"],
        "ports": [22, 443],
        "disks": [
            {"label": "root", "size-gb": 40, "encrypted": True},
            {"label": "data", "size-gb": 500, "encrypted": False},
        ],
    },
}

#: patterns that match nothing here, so the index must pick the case out of a crowd
DECOYS: list[dict[str, Any]] = [
    {"source": ["aws.s3"]},
    {"detail": {"state": ["pending"]}},
    {"detail-type": [{"prefix": "S3 "}]},
    {"detail": {"disks": {"label": ["swap"]}}},
    {"detail": {"c-count": [{"numeric": [">", 100]}]}},
]


def verdict(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether `pattern` matches `event`, asserting that all three ways agree."""
    compiled = compile_pattern(pattern)
    result = compiled.matches(event)
    assert compiled.explain(event).matched is result
    index = PatternIndex(
        [(f"decoy{i}", compile_pattern(d)) for i, d in enumerate(DECOYS)] + [("case", compiled)]
    )
    assert index.matching(event) == (["case"] if result else [])
    return result


def detail(**fields: Any) -> dict[str, Any]:
    """The EC2 event with its detail replaced by `fields`."""
    event = copy.deepcopy(EC2_EVENT)
    event["detail"] = fields
    return event


# --- exact values -----------------------------------------------------------------------------


def test_exact_values_and_their_or() -> None:
    assert verdict({"source": ["aws.ec2"]}, EC2_EVENT)
    assert verdict({"source": ["aws.ec2", "aws.fargate"]}, EC2_EVENT)
    assert not verdict({"source": ["aws.fargate"]}, EC2_EVENT)
    assert not verdict({"source": ["AWS.EC2"]}, EC2_EVENT)  # case-sensitive


def test_fields_are_anded() -> None:
    base = {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]}
    assert verdict({**base, "detail": {"state": ["terminated"]}}, EC2_EVENT)
    assert not verdict({**base, "detail": {"state": ["running"]}}, EC2_EVENT)


def test_numbers_match_as_numbers() -> None:
    assert verdict({"detail": {"c-count": [5]}}, EC2_EVENT)
    assert verdict({"detail": {"c-count": [5.0]}}, EC2_EVENT)
    assert verdict({"detail": {"x-limit": [3.018e2]}}, EC2_EVENT)
    assert not verdict({"detail": {"c-count": ["5"]}}, EC2_EVENT)


# --- null, empty strings, missing fields ------------------------------------------------------


def test_empty_string_matches_only_an_empty_string() -> None:
    assert verdict({"detail": {"eventVersion": [""]}}, EC2_EVENT)
    assert not verdict({"detail": {"responseElements": [""]}}, EC2_EVENT)  # null is not ""
    assert not verdict({"detail": {"absent": [""]}}, EC2_EVENT)  # missing is not ""


def test_null_matches_only_null() -> None:
    assert verdict({"detail": {"responseElements": [None]}}, EC2_EVENT)
    assert not verdict({"detail": {"eventVersion": [None]}}, EC2_EVENT)  # "" is not null
    assert not verdict({"detail": {"absent": [None]}}, EC2_EVENT)  # missing is not null


def test_null_and_empty_string_with_exists() -> None:
    for name in ("eventVersion", "responseElements"):
        assert verdict({"detail": {name: [{"exists": True}]}}, EC2_EVENT)
        assert not verdict({"detail": {name: [{"exists": False}]}}, EC2_EVENT)
    assert verdict({"detail": {"absent": [{"exists": False}]}}, EC2_EVENT)
    assert not verdict({"detail": {"absent": [{"exists": True}]}}, EC2_EVENT)


def test_null_and_empty_string_with_anything_but() -> None:
    # anything-but needs a value: null is one, a missing field is not
    assert verdict({"detail": {"responseElements": [{"anything-but": ""}]}}, EC2_EVENT)
    assert not verdict({"detail": {"eventVersion": [{"anything-but": ""}]}}, EC2_EVENT)
    assert not verdict({"detail": {"absent": [{"anything-but": ""}]}}, EC2_EVENT)


def test_operators_on_strings_skip_null_and_numbers() -> None:
    for operator in (
        {"prefix": ""},
        {"suffix": ""},
        {"equals-ignore-case": ""},
        {"wildcard": "*"},
        {"cidr": "0.0.0.0/0"},
    ):
        assert not verdict({"detail": {"responseElements": [operator]}}, EC2_EVENT), operator
        assert not verdict({"detail": {"c-count": [operator]}}, EC2_EVENT), operator
    assert verdict({"detail": {"eventVersion": [{"prefix": ""}]}}, EC2_EVENT)
    assert verdict({"detail": {"eventVersion": [{"wildcard": "*"}]}}, EC2_EVENT)


def test_a_missing_parent_is_a_missing_field() -> None:
    assert verdict({"detail": {"nope": {"x": [{"exists": False}]}}}, EC2_EVENT)
    assert not verdict({"detail": {"nope": {"x": [None]}}}, EC2_EVENT)
    assert not verdict({"nope": {"x": [{"anything-but": "y"}]}}, EC2_EVENT)


# --- prefix, suffix, equals-ignore-case, wildcard ---------------------------------------------


def test_prefix_examples() -> None:
    assert verdict({"time": [{"prefix": "2017-12-22"}]}, EC2_EVENT)
    assert not verdict({"time": [{"prefix": "2017-10-02"}]}, EC2_EVENT)
    assert verdict({"detail-type": [{"prefix": {"equals-ignore-case": "ec2 instance"}}]}, EC2_EVENT)
    assert not verdict({"detail-type": [{"prefix": "ec2 instance"}]}, EC2_EVENT)


def test_suffix_examples() -> None:
    assert verdict({"detail": {"FileName": [{"suffix": ".png"}]}}, EC2_EVENT)
    assert verdict(
        {"detail": {"FileName": [{"suffix": {"equals-ignore-case": ".PNG"}}]}}, EC2_EVENT
    )
    assert not verdict({"detail": {"FileName": [{"suffix": ".PNG"}]}}, EC2_EVENT)
    assert not verdict({"detail": {"FileName": [{"suffix": ".jpg"}]}}, EC2_EVENT)


def test_equals_ignore_case_examples() -> None:
    pattern = {"detail-type": [{"equals-ignore-case": "ec2 instance state-change notification"}]}
    assert verdict(pattern, EC2_EVENT)
    assert not verdict({"detail-type": [{"equals-ignore-case": "ec2 instance"}]}, EC2_EVENT)
    # full Unicode case folding: "ß" folds to "ss"
    assert verdict({"detail": {"s": [{"equals-ignore-case": "STRASSE"}]}}, detail(s="straße"))
    assert verdict(
        {"detail": {"s": [{"prefix": {"equals-ignore-case": "STRAS"}}]}}, detail(s="Straße")
    )


def test_wildcard_examples() -> None:
    arn = "arn:aws:events:us-east-1:123456789012:event-bus/default"
    pattern = {"detail": {"EventBusArn": [{"wildcard": "arn:aws:events:us-east-1:*:event-bus/*"}]}}
    assert verdict(pattern, detail(EventBusArn=arn))
    assert not verdict(pattern, detail(EventBusArn=arn.replace("us-east-1", "us-west-2")))
    assert verdict({"detail": {"FileName": [{"wildcard": "*.png"}]}}, EC2_EVENT)
    assert verdict({"detail": {"FileName": [{"wildcard": "photo.png"}]}}, EC2_EVENT)
    assert not verdict({"detail": {"FileName": [{"wildcard": "photo.pn"}]}}, EC2_EVENT)


# --- anything-but -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operand", "state", "expected"),
    [
        pytest.param("initializing", "terminated", True, id="string"),
        pytest.param("terminated", "terminated", False, id="string-excluded"),
        pytest.param(["stopped", "overloaded"], "terminated", True, id="list"),
        pytest.param(["stopped", "terminated"], "terminated", False, id="list-excluded"),
        pytest.param({"prefix": "init"}, "terminated", True, id="prefix"),
        pytest.param({"prefix": "term"}, "terminated", False, id="prefix-excluded"),
        pytest.param({"suffix": "ated"}, "terminated", False, id="suffix-excluded"),
        pytest.param(
            {"equals-ignore-case": ["Stopped", "OverLoaded"]},
            "overloaded",
            False,
            id="ignore-case-list-excluded",
        ),
        pytest.param(
            {"equals-ignore-case": ["Stopped", "OverLoaded"]},
            "running",
            True,
            id="ignore-case-list",
        ),
        pytest.param({"wildcard": "term*"}, "terminated", False, id="wildcard-excluded"),
        pytest.param({"wildcard": "run*"}, "terminated", True, id="wildcard"),
    ],
)
def test_anything_but_strings(operand: Any, state: str, expected: bool) -> None:
    assert (
        verdict({"detail": {"state": [{"anything-but": operand}]}}, detail(state=state)) is expected
    )


@pytest.mark.parametrize(
    ("operand", "value", "expected"),
    [
        pytest.param(123, 5, True, id="number"),
        pytest.param(5, 5.0, False, id="number-excluded-numerically"),
        pytest.param([100, 200, 300], 301.8, True, id="list"),
        pytest.param([100, 200, 300], 300.0, False, id="list-excluded"),
        pytest.param([100, 200, 300], "100", True, id="string-is-not-a-number"),
        pytest.param(["100"], 100, True, id="number-is-not-a-string"),
        pytest.param([1], True, True, id="boolean-is-not-a-number"),
    ],
)
def test_anything_but_numbers(operand: Any, value: Any, expected: bool) -> None:
    assert verdict({"detail": {"v": [{"anything-but": operand}]}}, detail(v=value)) is expected


def test_anything_but_over_an_array_needs_one_value_not_excluded() -> None:
    pattern = {"detail": {"tags": [{"anything-but": ["prod", "web"]}]}}
    assert not verdict(pattern, EC2_EVENT)
    assert verdict(pattern, detail(tags=["prod", "web", "db"]))
    assert not verdict(pattern, detail(tags=[]))


# --- numeric ----------------------------------------------------------------------------------


def test_numeric_documentation_example() -> None:
    pattern = {
        "detail": {
            "c-count": [{"numeric": [">", 0, "<=", 5]}],
            "d-count": [{"numeric": ["<", 10]}],
            "x-limit": [{"numeric": ["=", 3.018e2]}],
        }
    }
    assert verdict(pattern, EC2_EVENT)
    assert not verdict(pattern, {**EC2_EVENT, "detail": {**EC2_EVENT["detail"], "c-count": 6}})


@pytest.mark.parametrize(
    ("bounds", "value", "expected"),
    [
        pytest.param([">", 0], 0, False, id="gt-at-bound"),
        pytest.param([">=", 0], 0, True, id="ge-at-bound"),
        pytest.param([">=", 0], -0.0, True, id="negative-zero"),
        pytest.param(["<", 0], -1e-9, True, id="just-below"),
        pytest.param(["<=", -5e9], -5e9, True, id="eventbridge-lowest-bound"),
        pytest.param([">=", 5e9], 5e9, True, id="eventbridge-highest-bound"),
        pytest.param([">", 0, "<", 1], 0.5, True, id="open-range"),
        pytest.param([">", 0, "<", 1], 1, False, id="open-range-upper"),
        pytest.param([">=", 0, "<=", 1], 1.0, True, id="closed-range-upper"),
        pytest.param(["=", 0], 0.0, True, id="zero-float"),
        pytest.param(["=", 0], False, False, id="false-is-not-zero"),
        pytest.param(["=", 1], "1", False, id="string-is-not-a-number"),
        pytest.param(["=", 1], None, False, id="null-is-not-a-number"),
    ],
)
def test_numeric_edges(bounds: list[Any], value: Any, expected: bool) -> None:
    assert verdict({"detail": {"n": [{"numeric": bounds}]}}, detail(n=value)) is expected


def test_numeric_over_an_array_and_a_missing_field() -> None:
    assert verdict({"detail": {"ports": [{"numeric": [">", 400]}]}}, EC2_EVENT)
    assert not verdict({"detail": {"ports": [{"numeric": ["<", 22]}]}}, EC2_EVENT)
    assert not verdict({"detail": {"absent": [{"numeric": [">", 0]}]}}, EC2_EVENT)


# --- cidr -------------------------------------------------------------------------------------


def test_cidr_examples() -> None:
    assert verdict({"detail": {"source-ip": [{"cidr": "10.0.0.0/24"}]}}, EC2_EVENT)
    assert not verdict({"detail": {"source-ip": [{"cidr": "10.0.1.0/24"}]}}, EC2_EVENT)
    v6 = detail(ip="2001:db8:1234:1a00:9691:9503:25ad:1761")
    assert verdict({"detail": {"ip": [{"cidr": "2001:db8:1234:1a00::/64"}]}}, v6)
    assert not verdict({"detail": {"ip": [{"cidr": "2001:db8:1234:1a01::/64"}]}}, v6)
    assert not verdict({"detail": {"ip": [{"cidr": "10.0.0.0/8"}]}}, v6)


# --- exists -----------------------------------------------------------------------------------


def test_exists_works_on_leaves_only() -> None:
    # "Exists matching only works on leaf nodes. It does not work on intermediate nodes."
    assert not verdict({"detail": [{"exists": True}]}, EC2_EVENT)
    assert verdict({"detail": [{"exists": False}]}, EC2_EVENT)
    assert verdict({"detail": {"instance-id": [{"exists": True}]}}, EC2_EVENT)


def test_exists_on_arrays() -> None:
    assert verdict({"detail": {"tags": [{"exists": True}]}}, EC2_EVENT)
    assert not verdict({"detail": {"disks": [{"exists": True}]}}, EC2_EVENT)  # objects only
    assert verdict({"detail": {"disks": {"label": [{"exists": True}]}}}, EC2_EVENT)
    assert verdict({"detail": {"n": [{"exists": True}]}}, detail(n=[None]))


# --- arrays -----------------------------------------------------------------------------------


def test_array_in_the_event_matches_on_a_shared_value() -> None:
    resources = [
        "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
        "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
        "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f",
    ]
    event = {
        **EC2_EVENT,
        "resources": [
            "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
            "arn:aws:ec2:us-east-1:123456789012:image/ami-0a24e80a6b1b1b1b1",
        ],
    }
    assert verdict({"resources": resources}, event)
    assert not verdict({"resources": resources[1:]}, event)
    assert verdict({"resources": [{"suffix": "/ami-0a24e80a6b1b1b1b1"}]}, event)


def test_arrays_of_objects() -> None:
    assert verdict({"detail": {"disks": {"label": ["data"]}}}, EC2_EVENT)
    assert verdict({"detail": {"disks": {"size-gb": [{"numeric": [">", 100]}]}}}, EC2_EVENT)
    # the fields of one nested pattern hold in one element
    same = {"detail": {"disks": {"label": ["data"], "encrypted": [False]}}}
    split = {"detail": {"disks": {"label": ["data"], "encrypted": [True]}}}
    assert verdict(same, EC2_EVENT)
    assert not verdict(split, EC2_EVENT)


def test_arrays_of_arrays_and_mixed_arrays() -> None:
    event = detail(m=[["a", ["b"]], {"k": "c"}, 1, None])
    assert verdict({"detail": {"m": ["b"]}}, event)
    assert verdict({"detail": {"m": [1]}}, event)
    assert verdict({"detail": {"m": [None]}}, event)
    assert verdict({"detail": {"m": {"k": ["c"]}}}, event)
    assert not verdict({"detail": {"m": ["c"]}}, event)  # "c" is inside an object


def test_nested_pattern_over_an_empty_array_sees_an_empty_object() -> None:
    assert verdict({"detail": {"disks": {"label": [{"exists": False}]}}}, detail(disks=[]))
    assert not verdict({"detail": {"disks": {"label": ["root"]}}}, detail(disks=[]))


# --- $or --------------------------------------------------------------------------------------


def test_or_documentation_examples() -> None:
    inside = {
        "detail": {
            "$or": [
                {"c-count": [{"numeric": [">", 0, "<=", 5]}]},
                {"d-count": [{"numeric": ["<", 10]}]},
                {"x-limit": [{"numeric": [">", 0, "<", 3.018e2]}]},
            ]
        }
    }
    assert verdict(inside, EC2_EVENT)
    assert verdict(inside, detail(**{"x-limit": 1}))
    assert not verdict(inside, detail(**{"c-count": 6, "d-count": 10, "x-limit": 302}))
    top = {
        "source": ["aws.ec2"],
        "$or": [
            {"detail-type": ["EC2 Spot Instance Interruption"]},
            {"detail": {"state": ["terminated"]}},
        ],
    }
    assert verdict(top, EC2_EVENT)
    assert not verdict(top, detail(state="running"))


def test_or_with_exists_false_and_anything_but() -> None:
    pattern = {
        "detail": {"$or": [{"owner": [{"exists": False}]}, {"owner": [{"anything-but": "ops"}]}]}
    }
    assert verdict(pattern, detail())
    assert verdict(pattern, detail(owner="dev"))
    assert not verdict(pattern, detail(owner="ops"))


def test_or_inside_an_array_of_objects() -> None:
    pattern = {
        "detail": {"disks": {"$or": [{"label": ["swap"]}, {"size-gb": [{"numeric": [">", 400]}]}]}}
    }
    assert verdict(pattern, EC2_EVENT)
    assert not verdict(pattern, detail(disks=[{"label": "root", "size-gb": 40}]))
