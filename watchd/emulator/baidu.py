"""Baidu image search bulk push (`pushPic`, `delPic`), as the seed documents it.

Checks run in this order: the body and the credentials' presence (2), the account (60000009,
60001001), the list and every item (2, 301001), the injected transient failure (10003, 10005,
60000020), then the daily quota (301002, Asia/Shanghai day). A parameter error rejects the
whole call and stores nothing, as the real service does; a duplicate (301003) or a missing
delete key (301004) is reported after the rest of the call took effect.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from watchd.emulator.faults import Dice
from watchd.emulator.wire import Answer, is_json_int

SHANGHAI = timezone(timedelta(hours=8), "CST")  # China has no DST; avoids needing tzdata
MAX_PUSH = 20
MAX_DELETE = 10
TRANSIENT_ERRNOS = (10003, 10005, 60000020)

ERRMSG = {
    0: "",
    2: "参数错误",
    10003: "数据库错误",
    10005: "百家号内部服务异常",
    60000020: "百家号内部服务异常",
    301001: "无有效数据",
    301002: "今日上传图片次数耗尽",
    301003: "图片重复入库",
    301004: "删除的图片不存在",
    60000009: "帐号不存在",
    60001001: "授权校验失败",
}

Endpoint = Literal["pushPic", "delPic"]
_ID = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class BaiduCall:
    """One pushPic/delPic call the API answered (HTTP faults and drops are not calls).

    `items` is the list decoded from image_list/delete_list, or [] when that field was not a
    string holding a JSON list.
    """

    endpoint: Endpoint
    items: list[Any]
    errno: int
    errmsg: str
    at: float


class _Errno(Exception):
    """A call answered with a non-zero errno; `errmsg` is the seed's text plus any detail."""

    def __init__(self, errno: int, detail: str = "") -> None:
        super().__init__(errno)
        self.errno = errno
        self.errmsg = f"{ERRMSG[errno]}: {detail}" if detail else ERRMSG[errno]


class Baidu:
    """The submitted-image index, the daily counter and the call log; thread-safe.

    Decoded items are stored as they are and never mutated; readers get deep copies.
    """

    def __init__(self, apps: Mapping[str, str], *, dice: Dice, clock: Callable[[], float]) -> None:
        self._apps = dict(apps)
        self._dice = dice
        self._clock = clock
        self._lock = threading.Lock()
        self._index: dict[str, dict[str, Any]] = {}
        self._stored_per_day: dict[str, int] = {}
        self._calls: list[BaiduCall] = []

    def call(self, endpoint: Endpoint, fields: dict[str, object] | None) -> Answer:
        """Answer one call; `fields` is the decoded body, None when it was neither JSON nor a form."""
        list_field = "image_list" if endpoint == "pushPic" else "delete_list"
        items = _decode_list(fields.get(list_field)) if fields else None
        has_credentials = fields is not None and all(
            isinstance(fields.get(k), str) for k in ("app_id", "app_token")
        )
        try:
            if fields is None or not has_credentials:
                raise _Errno(2, "app_id and app_token are required strings")
            self._authorise(str(fields["app_id"]), str(fields["app_token"]))
            if list_field not in fields:
                raise _Errno(2, f"{list_field} is required")
            if items is None:
                raise _Errno(2, f"{list_field} must be a string holding a JSON list")
            if endpoint == "pushPic":
                _check_list(items, MAX_PUSH, list_field, _push_item_problem)
                self._check_content(items)
            else:
                _check_list(items, MAX_DELETE, list_field, _delete_item_problem)
            if self._dice.hit(self._dice.faults.transient_rate):
                raise _Errno(self._dice.pick(TRANSIENT_ERRNOS))
            errno = self._push(items) if endpoint == "pushPic" else self._delete(items)
            errmsg = ERRMSG[errno]
        except _Errno as error:
            errno, errmsg = error.errno, error.errmsg
        with self._lock:
            self._calls.append(BaiduCall(endpoint, items or [], errno, errmsg, self._clock()))
        payload = {"errno": errno, "errmsg": errmsg, "data": None}
        return Answer(payload, str(errno), "app_token" if has_credentials else "none")

    def _check_content(self, items: list[dict[str, Any]]) -> None:
        """The injected content rule: a call holding a refused title is a parameter error, as
        a real service's rules unknown to the client would make it."""
        refused = self._dice.faults.reject_titles_containing
        for n, item in enumerate(items):
            if refused and refused in item["title"]:
                raise _Errno(2, f"image_list[{n}] title: refused by the service")

    def _authorise(self, app_id: str, app_token: str) -> None:
        if app_id not in self._apps:
            raise _Errno(60000009)
        if self._apps[app_id] != app_token:
            raise _Errno(60001001)

    def _push(self, items: list[dict[str, Any]]) -> int:
        day = datetime.fromtimestamp(self._clock(), SHANGHAI).date().isoformat()
        quota = self._dice.faults.baidu_quota
        with self._lock:
            stored_today = self._stored_per_day.get(day, 0)
            if quota is not None and stored_today + len(items) > quota:
                raise _Errno(301002)
            duplicate = False
            for item in items:
                if item["id"] in self._index and item.get("extra", {}).get("modify") != "1":
                    duplicate = True
                    continue
                self._index[item["id"]] = item
                stored_today += 1
            self._stored_per_day[day] = stored_today
        return 301003 if duplicate else 0

    def _delete(self, items: list[dict[str, Any]]) -> int:
        missing = False
        with self._lock:
            for item in items:
                if item["type"] == "id":
                    ids = [item["key"]] if item["key"] in self._index else []
                else:
                    ids = [i for i, stored in self._index.items() if stored["objurl"] == item["key"]]
                for found in ids:
                    del self._index[found]
                missing = missing or not ids
        return 301004 if missing else 0

    def calls(self) -> list[BaiduCall]:
        with self._lock:
            return copy.deepcopy(self._calls)

    def index(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._index)

    def reset(self) -> None:
        with self._lock:
            self._index.clear()
            self._stored_per_day.clear()
            self._calls.clear()


def _decode_list(value: object) -> list[Any] | None:
    """The JSON list held in a string field, or None (a bare JSON array is not a string)."""
    if not isinstance(value, str):
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    return decoded if isinstance(decoded, list) else None


def _check_list(
    items: list[Any], limit: int, field: str, problem_of: Callable[[dict[str, Any]], str | None]
) -> None:
    """Raise 301001 for an empty list, 2 for too many items or the first invalid one."""
    if not items:
        raise _Errno(301001, f"{field} is empty")
    if len(items) > limit:
        raise _Errno(2, f"{field} holds {len(items)} items, at most {limit} are allowed")
    for n, item in enumerate(items):
        problem = problem_of(item) if isinstance(item, dict) else "must be an object"
        if problem:
            raise _Errno(2, f"{field}[{n}] {problem}")


def _push_item_problem(item: dict[str, Any]) -> str | None:
    """What is wrong with one pushPic item ("field: why"), or None."""
    for field in ("id", "title", "objurl", "fromurl", "edit_time"):
        if field not in item:
            return f"{field}: required"
    if not isinstance(item["id"], str) or not _ID.fullmatch(item["id"]):
        return "id: must be ASCII letters and digits only"
    if not isinstance(item["title"], str) or len(item["title"]) <= 8:
        return "title: must be a string longer than 8 characters"
    for field in ("objurl", "fromurl"):
        if not _is_url(item[field]):
            return f"{field}: must start with http, with no whitespace and no non-ASCII characters"
    if not is_json_int(item["edit_time"]):
        return "edit_time: must be an integer"
    if "tags" in item and not isinstance(item["tags"], str):
        return "tags: must be a string"
    if "copyright" in item and not is_json_int(item["copyright"]):
        return "copyright: must be an integer"
    if "extra" in item:
        extra = item["extra"]
        if not isinstance(extra, dict) or extra.get("modify", "0") not in ("0", "1"):
            return 'extra: must be an object whose modify is "0" or "1"'
    return None


def _delete_item_problem(item: dict[str, Any]) -> str | None:
    """What is wrong with one delPic item ("field: why"), or None."""
    if item.get("type") not in ("id", "objurl"):
        return 'type: must be "id" or "objurl"'
    if not isinstance(item.get("key"), str) or not item["key"]:
        return "key: must be a non-empty string"
    return None


def _is_url(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("http")
        and value.isascii()
        and not any(c.isspace() for c in value)
    )
