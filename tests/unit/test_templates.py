"""Unit tests for vebus.events.templates: sandboxed Jinja2 over a CloudEvent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import vebus.events.templates
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import PermanentError, TemplateError
from vebus.events.templates import Template, compile_template

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "veba"
PATH = "routes[0].sink.text"


@pytest.fixture(scope="module")
def vm_off() -> CloudEvent:
    """The VEBA VmPoweredOffEvent sample as a CloudEvent (data as JSON bytes)."""
    doc: dict[str, Any] = json.loads(
        (SAMPLES / "veba-VmPoweredOffEvent.json").read_text(encoding="utf-8")
    )
    return CloudEvent(
        id=doc["id"],
        source=doc["source"],
        type=doc["type"],
        time=doc["time"],
        subject="VmPoweredOffEvent",
        extensions={"eventclass": doc["eventclass"], "vsphereapiversion": "8.0.2.0"},
        data=json.dumps(doc["data"]).encode(),
    )


def render(source: str, event: CloudEvent, *, strict: bool = False) -> str:
    return compile_template(source, path=PATH, strict=strict).render(event)


# --- the context ------------------------------------------------------------------------------


def test_data_fields(vm_off: CloudEvent) -> None:
    text = "{{ data.Vm.Name }} powered off by {{ data.UserName }}"
    assert render(text, vm_off) == "test-01 powered off by VSPHERE.LOCAL\\Administrator"


def test_attributes_by_name_and_in_event(vm_off: CloudEvent) -> None:
    text = "{{ type }}|{{ source }}|{{ id }}|{{ time }}|{{ subject }}|{{ eventclass }}"
    assert render(text, vm_off) == (
        "com.vmware.vsphere.VmPoweredOffEvent.v0|https://10.0.0.1:443/sdk|"
        "08179137-b8e0-4973-b05f-8f212bf5003b|2020-02-11T21:29:54.9052539Z|"
        "VmPoweredOffEvent|event"
    )
    assert render("{{ event.type }} {{ event['vsphereapiversion'] }}", vm_off) == (
        "com.vmware.vsphere.VmPoweredOffEvent.v0 8.0.2.0"
    )
    assert render("{{ specversion }} {{ datacontenttype }}", vm_off) == "1.0 application/json"


def test_loops_conditions_and_filters(vm_off: CloudEvent) -> None:
    text = (
        "{% if data.Template %}template{% else %}vm{% endif %} "
        "{{ data.Vm.Name | upper }} {{ data.Key + 1 }} "
        "{% for k in ['Host', 'Vm'] %}{{ data[k].Name }};{% endfor %}"
    )
    assert render(text, vm_off) == "vm TEST-01 9903 10.185.22.74;test-01;"


def test_empty_and_text_data() -> None:
    empty = CloudEvent(id="1", source="s", type="t", data=b"")
    assert render("[{{ data }}]", empty) == "[None]"
    assert render("[{{ data.Vm.Name }}]", empty) == "[]"
    text = CloudEvent(id="1", source="s", type="t", datacontenttype="text/plain", data=b"hi")
    assert render("{{ data }}!", text) == "hi!"


def test_data_that_is_not_json_is_a_render_error() -> None:
    bad = CloudEvent(id="e1", source="s", type="t", data=b"{not json")
    with pytest.raises(TemplateError, match=r"^routes\[0\]\.sink\.text: event e1: data is not"):
        render("{{ data }}", bad)


def test_autoescape_is_off() -> None:
    event = CloudEvent(id="1", source="s", type="t", data=b'{"m": "<b>&\'\\""}')
    assert render("{{ data.m }}", event) == "<b>&'\""


# --- missing values: lenient and strict -------------------------------------------------------


def test_missing_values_render_empty_by_default(vm_off: CloudEvent) -> None:
    assert render("[{{ data.Nope }}][{{ data.Nope.Deeper.Name }}][{{ nope }}]", vm_off) == "[][][]"
    assert render("{{ data.Nope | default('n/a') }}", vm_off) == "n/a"
    assert render("{% if data.Nope %}yes{% else %}no{% endif %}", vm_off) == "no"


def test_strict_names_the_missing_value(vm_off: CloudEvent) -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ data.Vm.Nope }}", vm_off, strict=True)
    assert str(caught.value).startswith(f"{PATH}: undefined value:")
    assert "'Nope'" in str(caught.value)
    assert caught.value.path == PATH
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        render("{{ nope }}", vm_off, strict=True)
    with pytest.raises(TemplateError, match="'Nope'"):
        render("{{ data.Nope.Name }}", vm_off, strict=True)


def test_strict_renders_present_values_and_allows_default(vm_off: CloudEvent) -> None:
    assert render("{{ data.Vm.Name }}", vm_off, strict=True) == "test-01"
    assert render("{{ data.Nope | default('-') }}", vm_off, strict=True) == "-"
    assert render("{% if data.Nope is defined %}x{% endif %}", vm_off, strict=True) == ""
    assert render("{{ data.Ds }}", vm_off, strict=True) == "None"  # null is a value


# --- tojson -----------------------------------------------------------------------------------


def test_tojson_builds_a_json_body(vm_off: CloudEvent) -> None:
    text = '{"vm": {{ data.Vm.Name | tojson }}, "user": {{ data.UserName | tojson }},'
    text += ' "ref": {{ data.Vm.Vm | tojson }}, "ds": {{ data.Ds | tojson }},'
    text += ' "key": {{ data.Key | tojson }}, "tpl": {{ data.Template | tojson }}}'
    body = json.loads(render(text, vm_off))
    assert body == {
        "vm": "test-01",
        "user": "VSPHERE.LOCAL\\Administrator",
        "ref": {"Type": "VirtualMachine", "Value": "vm-56"},
        "ds": None,
        "key": 9902,
        "tpl": False,
    }


def test_tojson_keeps_markup_characters_and_unicode() -> None:
    event = CloudEvent(id="1", source="s", type="t", data='{"m": "<a href=\'x\'>é</a>"}'.encode())
    assert json.loads(render("{{ data.m | tojson }}", event)) == "<a href='x'>é</a>"
    assert render("{{ data.m | tojson }}", event) == "\"<a href='x'>é</a>\""


def test_tojson_of_the_whole_payload_round_trips(vm_off: CloudEvent) -> None:
    assert json.loads(render("{{ data | tojson }}", vm_off)) == json.loads(vm_off.data)
    assert json.loads(render("{{ data | tojson(indent=2) }}", vm_off)) == json.loads(vm_off.data)


def test_tojson_of_a_missing_value(vm_off: CloudEvent) -> None:
    assert render("{{ data.Nope | tojson }}", vm_off) == "null"
    assert render("{{ {'a': data.Nope} | tojson }}", vm_off) == '{"a": null}'
    with pytest.raises(TemplateError, match="'Nope'"):
        render("{{ data.Nope | tojson }}", vm_off, strict=True)


# --- the sandbox ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ ''.__class__ }}", id="dunder-class"),
        pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", id="subclasses"),
        pytest.param("{{ data.__init__.__globals__ }}", id="globals"),
        pytest.param("{{ cycler.__init__.__globals__.os }}", id="cycler-globals"),
    ],
)
def test_sandbox_blocks_private_attributes(vm_off: CloudEvent, source: str) -> None:
    with pytest.raises(TemplateError, match=r"^routes\[0\]\.sink\.text: not allowed: access to"):
        render(source, vm_off)


def test_sandbox_blocks_modifying_data(vm_off: CloudEvent) -> None:
    with pytest.raises(TemplateError, match="not allowed"):
        render("{{ data.pop('Vm') }}", vm_off)
    with pytest.raises(TemplateError, match="not allowed"):
        render("{% set x = [] %}{{ x.append(1) }}", vm_off)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ 10 ** 100000 }}", id="power"),
        pytest.param("{{ 'x' * 100000000 }}", id="string-repeat"),
        pytest.param("{{ 100000000 * [1] }}", id="list-repeat"),
        pytest.param("{{ range(10 ** 7) | list | length }}", id="range"),
    ],
)
def test_sandbox_refuses_runaway_work(vm_off: CloudEvent, source: str) -> None:
    with pytest.raises(TemplateError, match=r"(?i)too large|not allowed|range too big"):
        render(source, vm_off)


def test_ordinary_arithmetic_still_works(vm_off: CloudEvent) -> None:
    assert render("{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 3 * 4 }} {{ 1.5 * 2 }}", vm_off) == (
        "1024 ababab 12 3.0"
    )


def test_render_errors_are_template_errors(vm_off: CloudEvent) -> None:
    with pytest.raises(TemplateError, match=r"rendering failed: ZeroDivisionError"):
        render("{{ 1 / 0 }}", vm_off)
    with pytest.raises(TemplateError, match="undefined value"):
        render("{{ data.Nope + 1 }}", vm_off)  # arithmetic on a missing value fails even lenient
    assert issubclass(TemplateError, PermanentError)


# --- compiling --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("{{ data.Vm.Name ", "line 1: unexpected end of template", id="unclosed"),
        pytest.param("a\nb\n{% if x %}", "line 3: Unexpected end of template", id="unclosed-if"),
        pytest.param("{{ x | nosuchfilter }}", "No filter named 'nosuchfilter'", id="filter"),
        pytest.param("{% endfor %}", "line 1: Encountered unknown tag 'endfor'", id="tag"),
    ],
)
def test_syntax_error_names_the_path_and_line(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(source, path="routes[3].sink.body")
    assert str(caught.value).startswith("routes[3].sink.body: template syntax error on line ")
    assert message.lower() in str(caught.value).lower()
    assert caught.value.path == "routes[3].sink.body"


def test_not_a_string_is_refused() -> None:
    with pytest.raises(TemplateError, match=r"^p: expected a template string, got int$"):
        compile_template(5, path="p")  # type: ignore[arg-type]


def test_plain_text_and_trailing_newline(vm_off: CloudEvent) -> None:
    assert render("no placeholders\n", vm_off) == "no placeholders\n"


def test_template_is_reusable_and_keeps_its_source(vm_off: CloudEvent) -> None:
    template = compile_template("{{ id }}", path=PATH, strict=True)
    assert isinstance(template, Template)
    assert (template.source, template.path, template.strict) == ("{{ id }}", PATH, True)
    other = CloudEvent(id="2", source="s", type="t")
    assert [template.render(e) for e in (vm_off, other, vm_off)] == [vm_off.id, "2", vm_off.id]


def test_public_names() -> None:
    assert set(vebus.events.templates.__all__) == {"Template", "compile_template"}
