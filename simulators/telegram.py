"""The Telegram Bot API, as a bot sees it, and Telegram's users, as a test
drives them.

The Bot API (the real one's paths and answers, `{"ok": ..., "result": ...}`,
form or JSON bodies, any well-formed token):

    POST /telegram/bot{token}/getMe
    POST /telegram/bot{token}/getUpdates          offset, limit, timeout (long poll)
    POST /telegram/bot{token}/sendMessage         chat_id, text, parse_mode, reply_markup
    POST /telegram/bot{token}/sendPhoto           chat_id, photo (an upload), caption
    POST /telegram/bot{token}/editMessageText     chat_id, message_id, text, reply_markup
    POST /telegram/bot{token}/editMessageReplyMarkup
    POST /telegram/bot{token}/answerCallbackQuery callback_query_id, text
    POST /telegram/bot{token}/deleteWebhook, setMyCommands, getWebhookInfo

Users, driven by tests and the demo:

    POST /telegram/simulate/bots/{bot_id}/users/{user_id}/messages   {"text"}
    POST /telegram/simulate/bots/{bot_id}/users/{user_id}/presses    {"message_id", "data"}
    GET  /telegram/simulate/bots/{bot_id}/chats/{chat_id}/messages   what the bot sent
    GET  /telegram/simulate/bots/{bot_id}/polls                      long polls waiting
    POST /telegram/simulate/bots/{bot_id}/users/{user_id}/webapp     initData, signed
         with the bot's token as Telegram signs it for a user opening the WebApp

Options (PUT /_admin/options/telegram), read on every Bot API call:
    too_many_requests  the next this many calls answer 429 with
                       parameters.retry_after = retry_after seconds (0)
    retry_after        seconds (1)
    server_errors      the next this many calls answer 502 Bad Gateway (0)
    fault_methods      the methods those answers are for, e.g. ["sendMessage"]
                       (unset: any call)
    blocked_chats      chat ids whose users blocked the bot: sending to them
                       answers 403 "Forbidden: bot was blocked by the user"
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from simulators.framework.context import SimulatorContext

NAME = "telegram"

BOTS = "telegram.bot"
UPDATES = "telegram.update"
MESSAGES = "telegram.message"
CALLBACKS = "telegram.callback"

TOKEN_PATTERN = re.compile(r"^(?P<bot_id>[0-9]{1,20}):[A-Za-z0-9_-]{20,100}$")
# The Bot API's own limits.
TEXT_CHARS_MAX = 4_096
CAPTION_CHARS_MAX = 1_024
UPDATES_LIMIT_MAX = 100
LONG_POLL_SECONDS_MAX = 50
CALLBACK_DATA_BYTES_MAX = 64
PHOTO_BYTES_MAX = 10 * 1024 * 1024
ATTACHED = "attach://"

UserId = Annotated[int, Path(ge=1, le=10**15)]


class UserMessage(BaseModel):
    text: str = Field(min_length=1, max_length=TEXT_CHARS_MAX)
    first_name: str = Field(default="Ada", min_length=1, max_length=64)


class ButtonPress(BaseModel):
    message_id: int = Field(ge=1)
    data: str = Field(min_length=1, max_length=CALLBACK_DATA_BYTES_MAX)
    first_name: str = Field(default="Ada", min_length=1, max_length=64)


class BotApiError(Exception):
    def __init__(self, code: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def create(context: SimulatorContext) -> FastAPI:
    app = context.app(title="Telegram Bot API (simulated)")
    store = context.store
    # Long polls waiting for a bot's next update, by bot id.
    arrived: dict[int, asyncio.Event] = {}
    # Long polls waiting now, by bot id (a test writes once the bot waits).
    polling: dict[int, int] = {}
    # The latest getUpdates of each bot: as Telegram does, a newer one ends an
    # older one still waiting with 409, which then confirms (deletes) nothing.
    latest_poll: dict[int, int] = {}
    last_update: dict[int, int] = {}

    def wake(bot_id: int) -> None:
        arrived.setdefault(bot_id, asyncio.Event()).set()

    def user(user_id: int, first_name: str) -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": first_name}

    def bot_user(bot_id: int) -> dict[str, Any]:
        return {"id": bot_id, "is_bot": True, "first_name": "cardflow", "username": "cardflow_bot"}

    def enqueue(bot_id: int, update: dict[str, Any]) -> int:
        # A bot's update ids only grow, as Telegram's do, across the
        # simulator's resets too: an offset a bot sent earlier never skips a
        # newer update.
        update_id = max(store.next_number(f"{UPDATES}/{bot_id}"), last_update.get(bot_id, 0) + 1)
        last_update[bot_id] = update_id
        store.put(UPDATES, f"{bot_id}/{update_id:015d}", {"update_id": update_id, **update})
        wake(bot_id)
        return update_id

    def pending_updates(bot_id: int, offset: int, limit: int) -> list[dict[str, Any]]:
        rows = store.execute(
            "SELECT id, body FROM documents WHERE kind = ? AND id LIKE ? ORDER BY id",
            UPDATES,
            f"{bot_id}/%",
        )
        found: list[dict[str, Any]] = []
        for row in rows:
            update = json.loads(row[1])
            if update["update_id"] < offset:
                # Confirmed by the bot: Telegram forgets it.
                store.execute("DELETE FROM documents WHERE kind = ? AND id = ?", UPDATES, row[0])
            elif len(found) < limit:
                found.append(update)
        return found

    def sent(bot_id: int, chat_id: int, message: dict[str, Any]) -> dict[str, Any]:
        message_id = store.next_number(f"{MESSAGES}/{bot_id}/{chat_id}")
        full = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": bot_user(bot_id),
            **message,
        }
        store.put(MESSAGES, f"{bot_id}/{chat_id}/{message_id:012d}", full)
        return full

    def bot_message(bot_id: int, chat_id: int, message_id: int) -> dict[str, Any]:
        found = store.get(MESSAGES, f"{bot_id}/{chat_id}/{message_id:012d}")
        if found is None:
            raise BotApiError(400, "Bad Request: message to edit not found")
        return found

    def option(name: str, default: Any) -> Any:
        return context.option(NAME, name, default)

    def take_fault(method: str) -> None:
        """The options' 429 and 5xx, each consumed by one call (of the
        methods `fault_methods` names, when it names any)."""
        methods = option("fault_methods", None)
        if methods and method not in methods:
            return
        throttled = int(option("too_many_requests", 0))
        if throttled > 0:
            context.options.setdefault(NAME, {})["too_many_requests"] = throttled - 1
            retry_after = int(option("retry_after", 1))
            raise BotApiError(
                429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
            )
        failing = int(option("server_errors", 0))
        if failing > 0:
            context.options.setdefault(NAME, {})["server_errors"] = failing - 1
            raise BotApiError(502, "Bad Gateway")

    async def arguments(request: Request) -> dict[str, Any]:
        """The call's parameters: a form (urlencoded or multipart) or JSON, as Telegram takes."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            body = await request.json()
            return dict(body) if isinstance(body, dict) else {}
        if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            return {key: value for key, value in form.items()}
        return dict(request.query_params)

    def number(arguments: dict[str, Any], name: str, *, default: int | None = None) -> int:
        value = arguments.get(name, default)
        if value is None:
            raise BotApiError(400, f"Bad Request: {name} is empty")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise BotApiError(400, f"Bad Request: {name} must be a number") from None

    def markup(arguments: dict[str, Any]) -> dict[str, Any]:
        raw = arguments.get("reply_markup")
        if raw is None:
            return {}
        found = json.loads(raw) if isinstance(raw, str) else raw
        for row in found.get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and len(str(data).encode()) > CALLBACK_DATA_BYTES_MAX:
                    raise BotApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return {"reply_markup": found}

    def text_of(arguments: dict[str, Any], name: str, limit: int) -> str:
        text = str(arguments.get(name) or "")
        if not text:
            raise BotApiError(400, "Bad Request: message text is empty")
        if len(text) > limit:
            raise BotApiError(400, "Bad Request: message is too long")
        return text

    async def call(bot_id: int, method: str, args: dict[str, Any]) -> Any:
        if method == "getMe":
            return bot_user(bot_id)
        if method == "getUpdates":
            offset = number(args, "offset", default=0)
            limit = min(max(number(args, "limit", default=UPDATES_LIMIT_MAX), 1), UPDATES_LIMIT_MAX)
            wait = min(max(number(args, "timeout", default=0), 0), LONG_POLL_SECONDS_MAX)
            poll = latest_poll[bot_id] = latest_poll.get(bot_id, 0) + 1
            superseded = arrived.pop(bot_id, None)
            if superseded is not None:
                superseded.set()
            found = pending_updates(bot_id, offset, limit)
            if not found and wait:
                event = arrived.setdefault(bot_id, asyncio.Event())
                polling[bot_id] = polling.get(bot_id, 0) + 1
                try:
                    await asyncio.wait_for(event.wait(), wait)
                except TimeoutError:
                    pass
                finally:
                    polling[bot_id] -= 1
                if latest_poll[bot_id] != poll:
                    raise BotApiError(
                        409,
                        "Conflict: terminated by other getUpdates request; make sure that"
                        " only one bot instance is running",
                    )
                found = pending_updates(bot_id, offset, limit)
            return found
        if method == "sendMessage":
            chat_id = number(args, "chat_id")
            if chat_id in option("blocked_chats", []):
                raise BotApiError(403, "Forbidden: bot was blocked by the user")
            return sent(
                bot_id, chat_id, {"text": text_of(args, "text", TEXT_CHARS_MAX), **markup(args)}
            )
        if method == "sendPhoto":
            chat_id = number(args, "chat_id")
            photo: Any = args.get("photo")
            if photo is None:
                raise BotApiError(400, "Bad Request: there is no photo in the request")
            if isinstance(photo, str) and photo.startswith(ATTACHED):
                # An upload named elsewhere in the form (how aiogram sends files).
                photo = args.get(photo.removeprefix(ATTACHED))
            if not isinstance(photo, UploadFile):
                raise BotApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            content = await photo.read()
            if len(content) > PHOTO_BYTES_MAX:
                raise BotApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
            size = {
                "file_id": "photo-" + hashlib.sha256(content).hexdigest()[:24],
                "file_unique_id": hashlib.sha256(content).hexdigest()[:16],
                "width": 0,
                "height": 0,
                "file_size": len(content),
            }
            caption = args.get("caption")
            message: dict[str, Any] = {"photo": [size], **markup(args)}
            if caption:
                message["caption"] = text_of(args, "caption", CAPTION_CHARS_MAX)
            return sent(bot_id, chat_id, message)
        if method in ("editMessageText", "editMessageReplyMarkup"):
            chat_id, message_id = number(args, "chat_id"), number(args, "message_id")
            message = bot_message(bot_id, chat_id, message_id)
            if method == "editMessageText":
                message["text"] = text_of(args, "text", TEXT_CHARS_MAX)
            message.pop("reply_markup", None)
            message.update(markup(args))
            message["edit_date"] = int(time.time())
            store.put(MESSAGES, f"{bot_id}/{chat_id}/{message_id:012d}", message)
            return message
        if method == "answerCallbackQuery":
            query_id = str(args.get("callback_query_id") or "")
            press = store.get(CALLBACKS, f"{bot_id}/{query_id}")
            if press is None:
                raise BotApiError(400, "Bad Request: query is too old or query ID is invalid")
            press["answered"] = True
            press["answer_text"] = args.get("text")
            store.put(CALLBACKS, f"{bot_id}/{query_id}", press)
            return True
        if method in ("deleteWebhook", "setMyCommands", "deleteMyCommands"):
            return True
        if method == "getWebhookInfo":
            return {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
        raise BotApiError(404, "Not Found")

    @app.post("/bot{token}/{method}")
    @app.get("/bot{token}/{method}")
    async def bot_api(token: str, method: str, request: Request) -> JSONResponse:
        matched = TOKEN_PATTERN.match(token)
        if matched is None:
            return _error(BotApiError(401, "Unauthorized"))
        bot_id = int(matched["bot_id"])
        store.put(BOTS, str(bot_id), {"token": token})
        try:
            take_fault(method)
            result = await call(bot_id, method, await arguments(request))
        except BotApiError as error:
            return _error(error)
        except (json.JSONDecodeError, AttributeError, TypeError):
            return _error(BotApiError(400, "Bad Request: can't parse the request"))
        return JSONResponse({"ok": True, "result": result})

    # ----- users ------------------------------------------------------------------

    @app.post("/simulate/bots/{bot_id}/users/{user_id}/messages", status_code=201)
    async def user_says(bot_id: UserId, user_id: UserId, body: UserMessage) -> dict[str, int]:
        message_id = store.next_number(f"{MESSAGES}/from/{bot_id}/{user_id}")
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": user_id, "type": "private", "first_name": body.first_name},
            "from": user(user_id, body.first_name),
            "text": body.text,
        }
        if body.text.startswith("/"):
            command = body.text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return {"update_id": enqueue(bot_id, {"message": message})}

    @app.post("/simulate/bots/{bot_id}/users/{user_id}/presses", status_code=201)
    async def user_presses(bot_id: UserId, user_id: UserId, body: ButtonPress) -> dict[str, Any]:
        message = store.get(MESSAGES, f"{bot_id}/{user_id}/{body.message_id:012d}")
        if message is None:
            raise HTTPException(status_code=404, detail="the bot sent this user no such message")
        query_id = f"{user_id}-{store.next_number(f'{CALLBACKS}/{bot_id}')}"
        store.put(CALLBACKS, f"{bot_id}/{query_id}", {"answered": False, "data": body.data})
        update_id = enqueue(
            bot_id,
            {
                "callback_query": {
                    "id": query_id,
                    "from": user(user_id, body.first_name),
                    "message": message,
                    "chat_instance": str(user_id),
                    "data": body.data,
                }
            },
        )
        return {"update_id": update_id, "callback_query_id": query_id}

    @app.get("/simulate/bots/{bot_id}/chats/{chat_id}/messages")
    async def bot_said(bot_id: UserId, chat_id: UserId) -> dict[str, Any]:
        rows = store.execute(
            "SELECT body FROM documents WHERE kind = ? AND id LIKE ? ORDER BY id",
            MESSAGES,
            f"{bot_id}/{chat_id}/%",
        )
        return {"data": [json.loads(row[0]) for row in rows]}

    @app.get("/simulate/bots/{bot_id}/polls")
    async def polls_waiting(bot_id: UserId) -> dict[str, int]:
        return {"waiting": polling.get(bot_id, 0)}

    @app.get("/simulate/bots/{bot_id}/presses/{callback_query_id}")
    async def press_answered(bot_id: UserId, callback_query_id: str) -> dict[str, Any]:
        press = store.get(CALLBACKS, f"{bot_id}/{callback_query_id}")
        if press is None:
            raise HTTPException(status_code=404, detail="no such press")
        return press

    @app.post("/simulate/bots/{bot_id}/users/{user_id}/webapp")
    async def open_webapp(bot_id: UserId, user_id: UserId) -> dict[str, str]:
        known = store.get(BOTS, str(bot_id))
        if known is None:
            raise HTTPException(status_code=404, detail="this bot never called the Bot API")
        return {"init_data": signed_init_data(known["token"], user_id)}

    return app


def signed_init_data(bot_token: str, user_id: int, *, auth_date: int | None = None) -> str:
    """A WebApp's initData for `user_id` as Telegram signs it: HMAC-SHA256 of
    the sorted fields, keyed by HMAC-SHA256("WebAppData", bot token)."""
    fields = {
        "query_id": f"q{user_id}",
        "user": json.dumps({"id": user_id, "first_name": "Ada"}, separators=(",", ":")),
        "auth_date": str(int(time.time()) if auth_date is None else auth_date),
    }
    check = "\n".join(f"{key}={value}" for key, value in sorted(fields.items()))
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    fields["hash"] = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    return urlencode(fields)


def _error(error: BotApiError) -> JSONResponse:
    body: dict[str, Any] = {
        "ok": False,
        "error_code": error.code,
        "description": error.description,
    }
    if error.parameters:
        body["parameters"] = error.parameters
    return JSONResponse(body, status_code=error.code)
