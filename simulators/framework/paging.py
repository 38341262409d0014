"""Cursor paging as Stripe-style APIs do it: `limit` items after `starting_after`."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException


def page_after(
    items: list[dict[str, Any]],
    *,
    key: str,
    starting_after: str | None,
    limit: int,
    missing: str,
) -> tuple[list[dict[str, Any]], bool]:
    """The items after the one whose `key` is `starting_after`, and whether more follow.

    An unknown cursor is a 422 naming the query parameter, with `missing` as the message.
    """
    start = 0
    if starting_after is not None:
        cursors = [item[key] for item in items]
        if starting_after not in cursors:
            raise HTTPException(
                status_code=422,
                detail=[
                    {"loc": ["query", "starting_after"], "msg": missing, "type": "value_error"}
                ],
            )
        start = cursors.index(starting_after) + 1
    return items[start : start + limit], start + limit < len(items)
