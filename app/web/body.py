"""Request bodies: JSON parsed with every failure a 400 in the one error shape.

Flask's ``get_json`` has two gaps for untrusted input: deeply nested JSON
(``[[[[...]]]]`` 100000 deep) raises RecursionError, a 500, and a merely deep
body (900 levels) parses but then breaks ``repr`` in the error message. So
the body is parsed here, with the nesting checked before anything reads it.
"""
from __future__ import annotations

import json
from typing import Any

from flask import request

from app.web.errors import ApiError

# A1111 clients nest ``alwayson_scripts`` about five deep; nothing real nears this.
MAX_DEPTH = 32


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
    if depth(value) > MAX_DEPTH:
        raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep", "body", None)
    return value


def depth(value: Any) -> int:
    """How deep lists and objects nest (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
