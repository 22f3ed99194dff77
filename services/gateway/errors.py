"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import re

import msgspec
from fastapi.responses import JSONResponse

from shared.schemas.requests import DEADLINE_UNMEETABLE


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers  # e.g. Retry-After, WWW-Authenticate

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=error_body(self.message, self.type, self.param, self.code),
                            headers=self.headers)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# A deliberate refusal (the scheduler cannot meet the deadline), not a fault: its own type, never a 500.
DEADLINE_ERROR_TYPE = "deadline_error"


def deadline_unmeetable(message: str, retry_after_s: int) -> ApiError:
    """503 for a request the scheduler refused or shed because its deadline cannot be met."""
    return ApiError(503, message, code=DEADLINE_UNMEETABLE, type_=DEADLINE_ERROR_TYPE,
                    headers={"Retry-After": str(retry_after_s)})


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_UNKNOWN = re.compile(r"unknown field `(?P<field>[^`]+)`")


def from_validation_error(exc: msgspec.ValidationError) -> ApiError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.max_tokens`" into a 400 naming the field."""
    text = str(exc)
    path = ""
    if m := _AT.search(text):
        path = m.group("path").lstrip(".")
        text = text[: m.start()]
    code = "invalid_type"
    if m := _MISSING.search(text):
        path = f"{path}.{m.group('field')}" if path else m.group("field")
        code = "missing_required_parameter"
    elif m := _UNKNOWN.search(text):
        path = f"{path}.{m.group('field')}" if path else m.group("field")
        code = "unknown_parameter"
    param = path or None
    message = f"{text} (field `{param}`)" if param else text
    return ApiError(400, message, param=param, code=code)
