"""OpenAI-style error bodies, and the handlers that turn every failure into one.

A client (the `openai` package above all) expects `{"error": {"message", "type", "param",
"code"}}` with a 4xx status for its own mistakes: the `openai` client turns 400 into
`BadRequestError`, 404 into `NotFoundError`, 413/422 into `APIStatusError`s and 429 into
`RateLimitError`, showing `message`. So every refusal goes through here: `APIError` raised by the
app, FastAPI's validation errors (invalid JSON, a wrong or unknown field: 400 naming the field as
a JSON path, `messages[0].content[1].image_url.url`), unknown routes, and anything unexpected
(500, logged, the server keeps serving).
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ov_model.serve")

_TYPES_BY_STATUS = {
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


_BRANCH_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


class APIError(Exception):
    """A request the server refuses (or fails): status, message and OpenAI's type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _error_type(status)
        self.param = param
        self.code = code


def _error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _TYPES_BY_STATUS.get(status, "invalid_request_error")


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    """`error` as a JSON response with its status."""
    body = error_body(error.message, type=error.type, param=error.param, code=error.code)
    return JSONResponse(body, status_code=error.status)


def json_path(location: Sequence[str | int]) -> str:
    """A pydantic error location as a JSON path (`messages[0].content[1].text`), without the
    `body` prefix and the union branch names pydantic inserts (`str`, `list[...]`, tags)."""
    path = ""
    for position, item in enumerate(location):
        if position == 0 and item == "body":
            continue
        if isinstance(item, int):
            path += f"[{item}]"
            continue
        # the tag of a discriminated union follows the index into a list of union items
        after_union_index = (
            position >= 2
            and isinstance(location[position - 1], int)
            and str(location[position - 2]).startswith("list[")
        )
        if after_union_index or not str(item).isidentifier() or item in _BRANCH_NAMES:
            continue
        path += f".{item}" if path else str(item)
    return path


def validation_error(error: RequestValidationError) -> APIError:
    """FastAPI's request validation error as a 400 naming the first problem's field."""
    problems = list(error.errors())
    if not problems:
        return APIError(400, "invalid request body", code="invalid_request")
    first = _most_specific(problems)
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        message = f"invalid JSON body: {detail}" if detail else "invalid JSON body"
        return APIError(400, message, code="invalid_json")
    param = json_path(first.get("loc", ())) or None
    if kind == "missing" and param is None:
        return APIError(400, "the request needs a JSON body", code="invalid_request")
    if kind == "extra_forbidden":
        message = f"unknown field {param!r}: this server does not support it"
        return APIError(400, message, param=param, code="unknown_field")
    if kind == "model_attributes_type" and param is None:
        message = "the request body must be a JSON object (sent as application/json)"
        return APIError(400, message, code="invalid_request")
    text = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    given = first.get("input")
    if kind != "missing" and isinstance(given, str | int | float | bool) and len(repr(given)) < 80:
        text += f" (got {given!r})"
    message = f"{param}: {text}" if param else text
    return APIError(400, message, param=param, code="invalid_value")


def _most_specific(problems: list[dict]) -> dict:
    """The problem to report: pydantic lists one per union branch tried (a string content that
    is not a string, a list that is not a list); the one that got deepest says the most."""
    for problem in problems:
        if problem.get("type") in ("json_invalid", "extra_forbidden"):
            return problem
    return max(problems, key=lambda problem: len(problem.get("loc", ())))


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure of `app` through an OpenAI-style error body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(APIError(error.status_code, message))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request %s %s failed", request.method, request.url.path)
        message = f"internal error: {type(error).__name__}: {error}"
        return error_response(APIError(500, message, code="internal_error"))
