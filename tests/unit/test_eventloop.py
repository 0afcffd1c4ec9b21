"""The service event loop: uvloop by default, asyncio's own on request or without uvloop."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from vebus.runtime import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default_and_asyncio_can_be_chosen() -> None:
    assert eventloop.chosen({}) == "uvloop"
    assert eventloop.chosen({"VEBUS_EVENT_LOOP": " AsyncIO "}) == "asyncio"
    assert eventloop.run(_loop_module(), loop="uvloop").startswith("uvloop")
    assert eventloop.run(_loop_module(), loop="asyncio").startswith("asyncio")


def test_an_unknown_loop_is_named() -> None:
    with pytest.raises(ValueError, match="VEBUS_EVENT_LOOP='trio': expected one of uvloop"):
        eventloop.chosen({"VEBUS_EVENT_LOOP": "trio"})


def test_without_uvloop_the_standard_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert eventloop.run(_loop_module(), loop="uvloop").startswith("asyncio")
