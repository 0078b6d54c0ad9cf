"""Request bodies: JSON parsed with every failure a 400 in the one error shape.

Flask's ``get_json`` has gaps for untrusted input: deeply nested JSON
(``[[[[...]]]]`` 100000 deep) raises RecursionError, a 500; a merely deep
body (900 levels) parses but then breaks ``repr`` in the error message; and
NaN/Infinity parse. So the body is parsed here, and checked before anything
reads it.
"""
from __future__ import annotations

import json
import math
from typing import Any

from flask import request

from app.web.errors import ApiError

# A1111 clients nest ``alwayson_scripts`` about five deep; nothing real nears this.
MAX_DEPTH = 32
# The largest integer a request may hold: I-JSON's (RFC 7493), the most a browser's numbers keep
# exactly. Python reads 4300 digits; a 400-digit width turned into a 500 (OverflowError) wherever
# it met a float (the upscale routes' ``width / w``), so it is refused here, for every field at once.
MAX_INT = 2**53 - 1


def json_object(hint: str = "") -> dict:
    """The request's body as a JSON object, or a 400 saying what is wrong."""
    if not request.is_json:  # also what keeps cross-site text/plain form posts out
        raise ApiError(400, "the body must be JSON with Content-Type: application/json" + hint, "Content-Type",
                       request.mimetype or None)
    data = request.get_data(cache=True)
    if not data.strip():
        raise ApiError(400, "the body is empty; send a JSON object (Content-Type: application/json)" + hint,
                       "body", None)
    try:
        value = json.loads(data)
    except RecursionError:
        raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep", "body", None) from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8 ({exc.reason} at byte {exc.start})", "body", None) from None
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise ApiError(400, f"the body is not valid JSON ({exc})", "body", None) from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object (Content-Type: application/json)" + hint,
                       "body", type(value).__name__)
    check_tree(value)
    return value


def check_tree(body: dict) -> None:
    """Walk the body without recursion: refuse nesting past MAX_DEPTH,
    NaN/Infinity (Python's json reads them, JSON has no such numbers, and a
    field echoed back would make our own answer invalid JSON) and integers
    past MAX_INT, naming the top-level field that holds them."""
    stack: list[tuple[Any, int, str]] = [(child, 2, key) for key, child in body.items()]
    while stack:
        item, level, field = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ApiError(400, f"{field}: must be a finite number; {json.dumps(item)} is not JSON", field, item)
        check_int_size(field, item)
        if isinstance(item, (dict, list)):
            if level > MAX_DEPTH:
                raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep", "body", None)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1, field) for child in children)


def check_int_size(field: str, value: Any) -> None:
    """An integer within MAX_INT either way (any other value passes)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ApiError(400, f"{field}: an integer of {len(str(abs(value)))} digits; integers here are at most "
                            f"{MAX_INT} either way", field, value)
