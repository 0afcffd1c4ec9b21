"""The OpenAPI 3.1 document of the deadletter HTTP API, served at `/openapi.json`.

Built from the same vocabularies the code uses (error codes, exhausted conditions, job
states), so the document cannot drift from them; the tests check every response against it.
"""

from __future__ import annotations

from typing import Any

from vebus.errors import ErrorCode, Exhausted

__all__ = ["openapi_document"]

_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_ROUTE = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}
_WHEN = (
    "RFC 3339 time with an offset (`2025-01-02T03:04:05Z`) or an age counted back from "
    "now (`90s`, `15m`, `1h`, `1h30m`, `7d`)"
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_SUMMARY_PROPS: dict[str, Any] = {
    "id": {"type": "integer", "minimum": 1, "description": "its VEBUS_DLQ stream sequence"},
    "route": {"type": "string", "description": "the route; `_invalid` if never routed"},
    "sink": {"type": "string", "description": "the route's sink kind (`-` before routing)"},
    "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
    "status": {"type": ["integer", "null"], "description": "the last HTTP status, if any"},
    "attempts": {"type": "integer", "minimum": 0},
    "exhausted": {"type": "string", "enum": [e.value for e in Exhausted]},
    "error": {"type": "string"},
    "first_attempt": _TIME_OR_NULL,
    "last_attempt": _TIME_OR_NULL,
    "stored_at": _TIME_OR_NULL,
    "event_id": {"type": ["string", "null"]},
    "event_type": {"type": ["string", "null"]},
    "event_source": {"type": ["string", "null"]},
    "body_omitted": {
        "type": ["integer", "null"],
        "description": "set when the event was too large to keep with the letter "
        "(TOO_LARGE): its size in bytes; the letter then has no data and cannot be replayed",
    },
}

_SELECTION_PROPS: dict[str, Any] = {
    "ids": {"type": "array", "items": {"type": "integer", "minimum": 1}, "maxItems": 10000},
    "route": _ROUTE,
    "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
    "since": {"type": "string", "description": "stored at or after: " + _WHEN},
    "until": {"type": "string", "description": "stored before: " + _WHEN},
    "all": {
        "type": "boolean",
        "description": "every dead letter; required when no other condition is given",
    },
    "by": {
        "type": "string",
        "maxLength": 200,
        "description": "who asked (the console's signed-in operator): logged, kept in the job",
    },
}

_JOB_PROPS: dict[str, Any] = {
    "id": {"type": "string"},
    "state": {"type": "string", "enum": ["running", "done", "cancelled"]},
    "created": _TIME,
    "selection": {
        "type": "object",
        "properties": {
            "ids": {"type": "array", "items": {"type": "integer"}},
            "route": {"type": "string"},
            "code": {"type": "string"},
            "since": _TIME,
            "until": _TIME,
        },
        "additionalProperties": False,
    },
    "upto": {
        "type": "integer",
        "minimum": 0,
        "description": "the last dead-letter id when the replay was asked for",
    },
    "to_route": {"type": ["string", "null"]},
    "rate": {"type": "number", "minimum": 0, "description": "dead letters per second; 0: no limit"},
    "total": {"type": "integer", "minimum": 0},
    "cursor": {"type": "integer", "minimum": 0},
    "replayed": {"type": "integer", "minimum": 0},
    "gone": {"type": "integer", "minimum": 0},
    "failed": {"type": "integer", "minimum": 0},
    "errors": {"type": "array", "items": {"type": "string"}},
    "owner": {"type": "string"},
    "by": {"type": "string", "description": "who asked for it; empty when nobody said"},
    "heartbeat": _TIME,
    "finished": _TIME_OR_NULL,
}


def _object(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


def _schemas() -> dict[str, Any]:
    detail = {
        **_SUMMARY_PROPS,
        "msg_id": {"type": ["string", "null"], "description": "the original Nats-Msg-Id"},
        "event": {
            "type": ["object", "null"],
            "description": "the event as a structured CloudEvent (JSON format: what "
            "`vebus routes test --event` takes); null when it was not a valid one",
        },
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "data": {"description": "the body: JSON as JSON, other UTF-8 text as a string"},
        "data_base64": {"type": "string", "description": "a binary body, base64"},
        "error_detail": {
            "type": "string",
            "description": "several lines that explain the error, when the writer had them "
            "(a function's traceback or the tail of its output)",
        },
    }
    return {
        "Error": _object({"error": {"type": "string"}}),
        "DeadLetterSummary": _object(_SUMMARY_PROPS),
        "DeadLetter": _object(detail, [*_SUMMARY_PROPS, "msg_id", "event", "headers"]),
        "DeadLetterList": _object(
            {
                "items": {"type": "array", "items": _ref("DeadLetterSummary")},
                "next_after": {
                    "type": ["integer", "null"],
                    "description": "pass as `after` for the next page; null on the last",
                },
            }
        ),
        "Selection": {**_object(_SELECTION_PROPS, []), "minProperties": 1},
        "ReplayRequest": {
            **_object(
                {
                    **_SELECTION_PROPS,
                    "to_route": {**_ROUTE, "description": "instead of each one's own route"},
                    "rate": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 100000,
                        "description": "dead letters per second (default: "
                        "deadletter.replay_rate); 0: no limit",
                    },
                },
                [],
            ),
            "minProperties": 1,
        },
        "PurgeResult": _object(
            {
                "purged": {"type": "integer", "minimum": 0},
                "gone": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "selected but deleted by someone else meanwhile",
                },
            }
        ),
        "ReplayJob": _object(_JOB_PROPS),
        "ReplayJobList": _object({"items": {"type": "array", "items": _ref("ReplayJob")}}),
        "Stats": _object(
            {
                "total": {"type": "integer", "minimum": 0},
                "routes": {
                    "type": "object",
                    "additionalProperties": _object(
                        {
                            "total": {"type": "integer", "minimum": 0},
                            "codes": {
                                "type": "object",
                                "additionalProperties": {"type": "integer", "minimum": 0},
                            },
                        }
                    ),
                },
            }
        ),
    }


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
    "description": "the dead letter's id",
}
_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_SECURED: dict[str, Any] = {"security": [{"bearer": []}]}
_UNAUTHORIZED = {
    "401": _error("no `Authorization: Bearer <token>` header, or the wrong token"),
    "403": _error("the service has no token configured (deadletter.api.token)"),
}


def _paths() -> dict[str, Any]:
    query = [
        {"name": "route", "in": "query", "schema": _ROUTE},
        {
            "name": "code",
            "in": "query",
            "schema": {"type": "string", "enum": [c.value for c in ErrorCode]},
        },
        {"name": "since", "in": "query", "schema": {"type": "string"}, "description": _WHEN},
        {"name": "until", "in": "query", "schema": {"type": "string"}, "description": _WHEN},
        {
            "name": "after",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "default": 0},
            "description": "only dead letters with a higher id (paging)",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
    ]
    return {
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }
        },
        "/v1/dead-letters": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Dead letters, oldest first, filtered and paged",
                "parameters": query,
                "responses": {
                    "200": _json(_ref("DeadLetterList"), "one page"),
                    "400": _error("a parameter is invalid"),
                },
            }
        },
        "/v1/dead-letters/{id}": {
            "get": {
                "operationId": "getDeadLetter",
                "summary": "One dead letter with its event, headers and data",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("DeadLetter"), "the dead letter"),
                    "400": _error("the id is not a number"),
                    "404": _error("no dead letter has that id"),
                },
            },
            "delete": {
                "operationId": "purgeDeadLetter",
                "summary": "Delete one dead letter without replaying it",
                "parameters": [_ID],
                **_SECURED,
                "responses": {
                    "204": {"description": "deleted"},
                    "400": _error("the id is not a number"),
                    "404": _error("no dead letter has that id"),
                    **_UNAUTHORIZED,
                },
            },
        },
        "/v1/dead-letters/purge": {
            "post": {
                "operationId": "purgeDeadLetters",
                "summary": "Delete the selected dead letters without replaying them",
                **_SECURED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Selection")}},
                },
                "responses": {
                    "200": _json(_ref("PurgeResult"), "what was deleted"),
                    "400": _error("the selection is invalid or empty"),
                    **_UNAUTHORIZED,
                },
            }
        },
        "/v1/replays": {
            "post": {
                "operationId": "startReplay",
                "summary": "Replay the selected dead letters (a job that survives restarts)",
                "description": "Each dead letter's event is published to its route (or "
                "`to_route`) with its CloudEvent id, a new Nats-Msg-Id "
                "`<original>:replay:<dead-letter id>` and the `vebusreplay` extension, and the "
                "dead letter is deleted once JetStream acknowledged it. Dead letters stored "
                "after the request are not part of the job.",
                **_SECURED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ReplayRequest")}},
                },
                "responses": {
                    "202": {
                        **_json(_ref("ReplayJob"), "the job, started"),
                        "headers": {
                            "Location": {
                                "schema": {"type": "string"},
                                "description": "the job's URL",
                            }
                        },
                    },
                    "400": _error("the request is invalid"),
                    **_UNAUTHORIZED,
                },
            },
            "get": {
                "operationId": "listReplays",
                "summary": "Replay jobs, newest first (kept 7 days after they end)",
                "responses": {"200": _json(_ref("ReplayJobList"), "the jobs")},
            },
        },
        "/v1/replays/{id}": {
            "get": {
                "operationId": "getReplay",
                "summary": "One replay job and its progress",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json(_ref("ReplayJob"), "the job"),
                    "404": _error("no job has that id"),
                },
            },
            "delete": {
                "operationId": "cancelReplay",
                "summary": "Cancel a running replay after the dead letter in flight",
                "parameters": [_JOB_ID],
                **_SECURED,
                "responses": {
                    "200": _json(_ref("ReplayJob"), "the job, cancelled (or already ended)"),
                    "404": _error("no job has that id"),
                    **_UNAUTHORIZED,
                },
            },
        },
        "/v1/stats": {
            "get": {
                "operationId": "stats",
                "summary": "Dead letters by route and error code",
                "responses": {"200": _json(_ref("Stats"), "the counts")},
            }
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document for this service version."""
    paths = _paths()
    for template, ops in paths.items():
        if template != "/openapi.json":
            for op in ops.values():
                op["responses"]["503"] = _error("NATS did not answer; try again")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vebus deadletter API",
            "version": version,
            "description": "List, show, replay and purge the dead letters of vebus (events "
            "that could not be delivered). Reading needs no credentials; replay and purge "
            "need `Authorization: Bearer <deadletter.api.token>`. See docs/deadletters.md.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
