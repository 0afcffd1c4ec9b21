"""Unit tests of vebus_collector.mapping: pyvmomi events to VEBA-compatible `data`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pyVmomi import VmomiSupport, vim, vmodl

from vebus_collector import mapping
from vebus_collector.mapping import event_class, event_kind, to_data, to_json

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "veba"

# The samples come from vCenter 6.7/7.0 through govmomi: no property newer than that API.
SAMPLE_API = "6.7"


def _sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return doc.get("data", doc) if "specversion" in doc else doc


def _shape(value: Any) -> Any:
    """Keys and nesting of a JSON value: objects by their keys, null as None, leaves as '*'."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return None if value is None else "*"


def _vm_powered_off() -> vim.event.VmPoweredOffEvent:
    """The event of veba-VmPoweredOffEvent.json, as pyvmomi would decode it."""
    return vim.event.VmPoweredOffEvent(
        key=9902,
        chainId=9895,
        createdTime=datetime(2020, 2, 11, 21, 28, 23, 677595, tzinfo=UTC),
        userName="VSPHERE.LOCAL\\Administrator",
        datacenter=vim.event.DatacenterEventArgument(
            name="testDC", datacenter=vim.Datacenter("datacenter-2")
        ),
        computeResource=vim.event.ComputeResourceEventArgument(
            name="cls", computeResource=vim.ClusterComputeResource("domain-c7")
        ),
        host=vim.event.HostEventArgument(name="10.185.22.74", host=vim.HostSystem("host-21")),
        vm=vim.event.VmEventArgument(name="test-01", vm=vim.VirtualMachine("vm-56")),
        fullFormattedMessage="test-01 on  10.0.0.1 in testDC is powered off",
        changeTag="",
        template=False,
    )


def _event_ex(**kwargs: Any) -> vim.event.EventEx:
    fields: dict[str, Any] = {
        "key": 7,
        "chainId": 7,
        "createdTime": datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
        "userName": "user",
        "eventTypeId": "esx.problem.test",
        "severity": "warning",
        "message": "test problem",
    }
    return vim.event.EventEx(**(fields | kwargs))


def test_vm_powered_off_event_maps_to_the_veba_sample() -> None:
    sample = _sample("veba-VmPoweredOffEvent.json")

    data = to_data(_vm_powered_off(), version=SAMPLE_API)

    assert data == sample
    assert list(data) == list(sample)  # same order as VEBA's payloads, too


def test_vm_powered_off_event_class_and_kind() -> None:
    event = _vm_powered_off()

    assert event_class(event) == "VmPoweredOffEvent"
    assert event_kind(event) == "event"


def test_drs_event_has_the_sample_shape() -> None:
    sample = _sample("veba-DrsVmPoweredOnEvent.json")
    event = vim.event.DrsVmPoweredOnEvent(
        key=992270,
        chainId=992267,
        createdTime=datetime(2021, 5, 4, 7, 33, 32, 759000, tzinfo=UTC),
        userName="VSPHERE.LOCAL\\test-user",
        datacenter=vim.event.DatacenterEventArgument(
            name="Datacenter", datacenter=vim.Datacenter("datacenter-21")
        ),
        computeResource=vim.event.ComputeResourceEventArgument(
            name="Cluster01", computeResource=vim.ClusterComputeResource("domain-c84")
        ),
        host=vim.event.HostEventArgument(name="esxi1.local", host=vim.HostSystem("host-34")),
        vm=vim.event.VmEventArgument(name="TestVM", vm=vim.VirtualMachine("vm-596")),
        fullFormattedMessage="DRS powered On TestVM on esxi1.local in Datacenter",
        changeTag="",
    )

    data = to_data(event, version=SAMPLE_API)

    assert _shape(data) == _shape(sample)
    assert data["ComputeResource"]["ComputeResource"] == {
        "Type": "ClusterComputeResource",
        "Value": "domain-c84",
    }
    assert data["CreatedTime"] == "2021-05-04T07:33:32.759000Z"


def test_host_event_has_the_sample_shape() -> None:
    sample = _sample("veba-data-host-enter-maintenance.json")
    event = vim.event.EnteredMaintenanceModeEvent(
        key=910093,
        chainId=910066,
        createdTime=datetime(2022, 4, 20, 15, 47, 32, 365000, tzinfo=UTC),
        userName="VSPHERE.LOCAL\\Administrator",
        datacenter=vim.event.DatacenterEventArgument(
            name="HomeLab", datacenter=vim.Datacenter("datacenter-47")
        ),
        computeResource=vim.event.ComputeResourceEventArgument(
            name="CL1", computeResource=vim.ClusterComputeResource("domain-c52")
        ),
        host=vim.event.HostEventArgument(
            name="esx02.cl.vmweventbroker.io", host=vim.HostSystem("REPLACE-ME")
        ),
        fullFormattedMessage=sample["FullFormattedMessage"],
        changeTag="",
    )

    # Always six fraction digits; Go (VEBA) trims trailing zeros: the same instant.
    assert to_data(event, version=SAMPLE_API) == sample | {
        "CreatedTime": "2022-04-20T15:47:32.365000Z"
    }


def test_newer_pyvmomi_properties_are_kept_without_a_version() -> None:
    sample = _sample("veba-VmPoweredOffEvent.json")

    data = to_data(_vm_powered_off())

    # pyvmomi 9.1 knows vSphere 9.1's Event.tgw and Event.auditId; a 6.x-8.x vCenter
    # never sends them, so they are left out when the connection's version is given.
    assert set(data) - set(sample) == {"Tgw", "AuditId"}
    assert data["Tgw"] is None
    assert data["AuditId"] is None
    assert {key: data[key] for key in sample} == sample


@pytest.mark.parametrize(
    "version",
    ["vim.version.version11", "urn:vim25/6.5", "vim25/6.5", "6.5", "6.7", "8.0.3.0"],
)
def test_version_forms_all_select_the_same_properties(version: str) -> None:
    assert set(to_data(_vm_powered_off(), version=version)) == set(
        _sample("veba-VmPoweredOffEvent.json")
    )


def test_version_9_1_has_tgw_and_audit_id() -> None:
    assert {"Tgw", "AuditId"} <= set(to_data(_vm_powered_off(), version="9.1.0.0"))


def test_unknown_version_is_refused_with_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"unknown vSphere API version '5\.9'.*8\.0\.3\.0"):
        to_data(_vm_powered_off(), version="5.9")


def test_event_ex_class_is_its_event_type_id_and_kind_eventex() -> None:
    event = _event_ex()

    assert event_class(event) == "esx.problem.test"
    assert event_kind(event) == "eventex"


def test_event_ex_without_event_type_id_falls_back_to_its_class() -> None:
    assert event_class(_event_ex(eventTypeId="")) == "EventEx"


def test_event_ex_data() -> None:
    vm = vim.VirtualMachine("vm-57")
    event = _event_ex(
        objectId="vm-57",
        objectType=vim.VirtualMachine,
        objectName="DC0_H0_VM0",
        arguments=[
            vmodl.KeyAnyValue(key="a", value="x"),
            vmodl.KeyAnyValue(key="n", value=42),
            vmodl.KeyAnyValue(key="obj", value=vm),
            vmodl.KeyAnyValue(key="bin", value=VmomiSupport.binary(b"\x00\x01vebus")),
        ],
        vm=vim.event.VmEventArgument(name="DC0_H0_VM0", vm=vm),
    )

    data = to_data(event, version="6.5")

    assert data["EventTypeId"] == "esx.problem.test"
    assert data["Severity"] == "warning"
    assert data["Message"] == "test problem"
    assert data["Arguments"] == [
        {"Key": "a", "Value": "x"},
        {"Key": "n", "Value": 42},
        {"Key": "obj", "Value": {"Type": "VirtualMachine", "Value": "vm-57"}},
        {"Key": "bin", "Value": "AAF2ZWJ1cw=="},  # base64, as Go's encoding/json writes []byte
    ]
    assert data["ObjectType"] == "VirtualMachine"  # pyvmomi gives the type, VEBA its name
    assert data["ObjectId"] == "vm-57"
    assert data["Vm"] == {"Name": "DC0_H0_VM0", "Vm": {"Type": "VirtualMachine", "Value": "vm-57"}}
    assert data["Fault"] is None


def test_event_ex_fault_is_mapped_as_a_data_object() -> None:
    fault = vim.fault.InvalidPowerState(
        msg="bad state", requestedState="poweredOff", existingState="poweredOff"
    )

    data = to_data(_event_ex(fault=fault), version="6.5")

    assert data["Fault"] == {
        "Msg": "bad state",
        "FaultCause": None,
        "FaultMessage": None,
        "RequestedState": "poweredOff",
        "ExistingState": "poweredOff",
    }


def test_extended_event_class_kind_and_data() -> None:
    event = vim.event.ExtendedEvent(
        key=3,
        chainId=3,
        createdTime=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        userName="",
        message="ext",
        eventTypeId="com.example.ext",
        managedObject=vim.HostSystem("host-21"),
        data=[vim.event.ExtendedEvent.Pair(key="k", value="v")],
    )

    assert event_class(event) == "com.example.ext"
    assert event_kind(event) == "extendedevent"
    data = to_data(event, version="6.5")
    assert data["ManagedObject"] == {"Type": "HostSystem", "Value": "host-21"}
    assert data["Data"] == [{"Key": "k", "Value": "v"}]
    assert data["EventTypeId"] == "com.example.ext"


def test_general_user_event_is_a_plain_event() -> None:
    event = vim.event.GeneralUserEvent(
        key=1,
        chainId=1,
        createdTime=datetime(2024, 1, 2, tzinfo=UTC),
        userName="user",
        message="hello",
        entity=vim.event.ManagedEntityEventArgument(
            name="DC0_H0_VM0", entity=vim.VirtualMachine("vm-57")
        ),
    )

    assert event_class(event) == "GeneralUserEvent"
    assert event_kind(event) == "event"
    data = to_data(event, version="6.5")
    assert data["Message"] == "hello"
    assert data["Entity"] == {
        "Name": "DC0_H0_VM0",
        "Entity": {"Type": "VirtualMachine", "Value": "vm-57"},
    }


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (datetime(2020, 2, 11, 21, 28, 23, 677595, tzinfo=UTC), "2020-02-11T21:28:23.677595Z"),
        (
            datetime(2020, 2, 11, 23, 28, 23, 5, tzinfo=timezone(timedelta(hours=2))),
            "2020-02-11T21:28:23.000005Z",
        ),
        (datetime(2020, 2, 11, 21, 28, 23), "2020-02-11T21:28:23.000000Z"),  # naive: UTC
    ],
)
def test_datetimes_are_utc_and_end_in_z(created: datetime, expected: str) -> None:
    event = _vm_powered_off()
    event.createdTime = created

    assert to_data(event)["CreatedTime"] == expected


def test_nested_datetimes_end_in_z_too() -> None:
    event = vim.event.VmReconfiguredEvent(
        key=1,
        chainId=1,
        createdTime=datetime(2024, 1, 2, tzinfo=UTC),
        userName="user",
        template=False,
        configSpec=vim.vm.ConfigSpec(createDate=datetime(2023, 5, 6, 7, 8, 9, 10, tzinfo=UTC)),
    )

    assert to_data(event)["ConfigSpec"]["CreateDate"] == "2023-05-06T07:08:09.000010Z"


def test_unset_fields_are_null() -> None:
    event = vim.event.UserLoginSessionEvent(
        key=26,
        chainId=26,
        createdTime=datetime(2024, 1, 2, tzinfo=UTC),
        userName="user",
        ipAddress="127.0.0.1",
        locale="en_US",
        sessionId="c6fa7b42",
    )

    data = to_data(event, version="6.5")

    for key in ("Datacenter", "ComputeResource", "Host", "Vm", "Ds", "Net", "Dvs"):
        assert data[key] is None, key
    assert data["FullFormattedMessage"] is None
    assert data["ChangeTag"] is None
    assert data["UserAgent"] is None
    assert data["IpAddress"] == "127.0.0.1"


def test_unset_list_is_null_and_a_set_one_a_list() -> None:
    # SOAP cannot tell an empty array from an absent one; govmomi/VEBA write null.
    assert to_data(_event_ex())["Arguments"] is None
    assert to_data(_event_ex(arguments=[vmodl.KeyAnyValue(key="a", value="1")]))["Arguments"] == [
        {"Key": "a", "Value": "1"}
    ]


def test_ds_net_dvs_arguments() -> None:
    ds = vim.event.DatastoreEventArgument(name="LocalDS_0", datastore=vim.Datastore("datastore-13"))
    event = vim.event.DatastoreRenamedEvent(
        key=45,
        chainId=45,
        createdTime=datetime(2024, 1, 2, tzinfo=UTC),
        userName="user",
        datastore=ds,
        oldName="a",
        newName="b",
        ds=ds,
        net=vim.event.NetworkEventArgument(name="VM Network", network=vim.Network("network-7")),
        dvs=vim.event.DvsEventArgument(name="DVS0", dvs=vim.DistributedVirtualSwitch("dvs-9")),
    )

    data = to_data(event, version="6.5")

    assert data["Ds"] == {
        "Name": "LocalDS_0",
        "Datastore": {"Type": "Datastore", "Value": "datastore-13"},
    }
    assert data["Net"] == {
        "Name": "VM Network",
        "Network": {"Type": "Network", "Value": "network-7"},
    }
    assert data["Dvs"] == {
        "Name": "DVS0",
        "Dvs": {"Type": "DistributedVirtualSwitch", "Value": "dvs-9"},
    }
    assert data["Datastore"] == data["Ds"]
    assert (data["OldName"], data["NewName"]) == ("a", "b")


def test_nested_data_objects_use_their_runtime_type() -> None:
    disk = vim.vm.device.VirtualDisk(key=203, capacityInKB=1024, controllerKey=202, unitNumber=0)
    spec = vim.vm.ConfigSpec(
        numCPUs=2,
        annotation="hello",
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)],
    )
    event = vim.event.VmReconfiguredEvent(
        key=41,
        chainId=41,
        createdTime=datetime(2024, 1, 2, tzinfo=UTC),
        userName="user",
        template=False,
        configSpec=spec,
    )

    config = to_data(event, version="6.5")["ConfigSpec"]

    assert config["NumCPUs"] == 2
    assert config["Annotation"] == "hello"
    change = config["DeviceChange"][0]
    assert change["Operation"] == "add"
    assert change["Device"]["CapacityInKB"] == 1024  # a VirtualDisk property
    assert change["Device"]["Key"] == 203
    assert "DynamicType" not in change["Device"]


def test_to_json_is_compact_and_decodes_to_the_data() -> None:
    event = _vm_powered_off()

    raw = to_json(event, version=SAMPLE_API)

    assert isinstance(raw, bytes)
    assert b": " not in raw
    assert b", " not in raw
    assert msgspec.json.decode(raw) == to_data(event, version=SAMPLE_API)


def test_a_non_event_is_refused() -> None:
    with pytest.raises(
        TypeError, match=r"expected a pyvmomi vim\.event\.Event, got vim\.event\.VmEventArgument"
    ):
        to_data(vim.event.VmEventArgument(name="x", vm=vim.VirtualMachine("vm-1")))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        event_class("VmPoweredOffEvent")  # type: ignore[arg-type]


def test_rfc3339_is_the_created_time_form() -> None:
    created = datetime(2020, 2, 11, 22, 28, 23, 677595, tzinfo=timezone(timedelta(hours=1)))
    event = _vm_powered_off()
    event.createdTime = created

    assert mapping.rfc3339(created) == "2020-02-11T21:28:23.677595Z"
    assert mapping.rfc3339(created) == to_data(event)["CreatedTime"]


def test_public_names() -> None:
    assert sorted(mapping.__all__) == [
        "event_class",
        "event_kind",
        "rfc3339",
        "to_data",
        "to_json",
    ]
