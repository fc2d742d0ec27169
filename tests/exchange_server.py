"""A local Binance-compatible exchange for tests: the two public spot endpoints the real
`ccxt.binance` client calls for `load_markets` (GET /api/v3/exchangeInfo) and `fetch_ohlcv`
(GET /api/v3/klines), answered from a candle frame with Binance's JSON shapes, on a simulated clock,
with faults injected on a schedule.

Loopback only, a free port, at most `max_requests` requests and `time_limit_s` seconds of real time:
then it stops answering (connections are refused) and `stop()` only joins the thread.

Time: `now()` is the simulated clock (`jaxtrader.trading.feeds.SimClock`, the file the runner
advances when it "sleeps"). A candle is closed when its open time + interval <= now; like Binance,
every answer that reaches `now` also carries the still-forming candle, with provisional values.

Faults:
- by klines request number (1-based), `http_faults={n: kind}`: "500", "502", "503" (HTML error
  pages over several lines, as a proxy sends them), "429" (Binance's -1003 JSON and a Retry-After
  header of `retry_after_s`), "timeout" (no answer until the client gave up), "truncated" (the
  real answer cut in half), "invalid" (an HTML page with status 200); "down" makes this and every
  later request a 503;
- by content, `content_faults={n: kind}`: from klines request n on, applied to the first answer
  without an HTTP fault that carries at least three closed candles: "gap" (the 2nd closed candle is left out), "repeat" (the first two
  closed candles are sent twice), "out_of_order" (the 1st and 2nd closed candles are swapped),
  "nan" (the 2nd closed candle's high is "NaN").
Every answer is recorded in `log` with the faults it carried, so a test can count what it injected.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

HTTP_FAULTS = ("500", "502", "503", "429", "timeout", "truncated", "invalid", "down")
CONTENT_FAULTS = ("gap", "repeat", "out_of_order", "nan")

_HTML_ERROR = (
    "<!DOCTYPE html>\n<html><head><title>{code} {reason}</title></head>\n<body>\n"
    "<h1>{code} {reason}</h1>\n<p>The server is temporarily unable to service your request.</p>\n"
    "</body></html>\n"
)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class _Quiet(ThreadingHTTPServer):
    """No traceback on stderr when a client goes away mid-answer (a runner killed with -9)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@dataclass
class Served:
    """One answered request: what was asked, the simulated time, what was sent and which faults."""

    n: int  # request number (all endpoints)
    path: str
    params: dict[str, str]
    now: float
    status: int
    faults: list[str] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)  # open times (ms) of closed candles sent
    forming: int | None = None  # open time (ms) of the forming candle sent, if any


def _num(x: float) -> str:
    return repr(float(x))  # Binance sends numbers as strings; repr round-trips a float exactly


class ExchangeServer:
    def __init__(
        self,
        candles: pd.DataFrame,
        symbol: str,
        now: Callable[[], float],
        *,
        http_faults: dict[int, str] | None = None,
        content_faults: dict[int, str] | None = None,
        retry_after_s: int = 30,
        timeout_hold_s: float = 3.0,
        max_requests: int = 2000,
        time_limit_s: float = 120.0,
    ) -> None:
        for kind in (*(http_faults or {}).values(), *(content_faults or {}).values()):
            if kind not in HTTP_FAULTS + CONTENT_FAULTS:
                raise ValueError(f"unknown fault {kind!r}")
        self.frame = candles
        self.ts_ms = (pd.DatetimeIndex(candles.index).asi8 // 1_000_000).astype(np.int64)
        self.step_ms = int((candles.index[1] - candles.index[0]).value // 1_000_000)
        self.values = candles[["open", "high", "low", "close", "volume"]].to_numpy(float)
        self.symbol = symbol
        self.market_id = symbol.replace("/", "")
        self.now = now
        self.http_faults = dict(http_faults or {})
        self.content_faults = sorted((content_faults or {}).items())
        self.retry_after_s = retry_after_s
        self.timeout_hold_s = timeout_hold_s
        self.max_requests = max_requests
        self.time_limit_s = time_limit_s
        self.log: list[Served] = []
        self.klines = 0
        self.down = False
        self._lock = threading.Lock()
        self._released = threading.Event()  # set on stop: held "timeout" requests end at once
        self._httpd = _Quiet(("127.0.0.1", 0), self._handler())
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._started = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ExchangeServer:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._httpd.timeout = 0.05
        while not self._released.is_set():
            if len(self.log) >= self.max_requests:
                break
            if time.monotonic() - self._started > self.time_limit_s:
                break
            self._httpd.handle_request()
        self._httpd.server_close()  # refuse further connections: the server stopped by itself

    def stop(self) -> None:
        self._released.set()
        self._thread.join(timeout=5)

    def ccxt_config(self, timeout_ms: int = 2000) -> dict[str, Any]:
        """Constructor settings for `ccxt.binance` (JAXTRADER_CCXT_CONFIG): every Binance API URL
        points here (spot at /api/v3, anything else at /KEY, which answers 400, so nothing can
        reach the internet), only spot markets are loaded, a short timeout, a 1 ms rate limit."""
        import ccxt

        api = {key: f"{self.url}/{key}" for key in ccxt.binance().describe()["urls"]["api"]}
        api.update(public=f"{self.url}/api/v3", private=f"{self.url}/api/v3")
        return {
            "urls": {"api": api},
            "options": {
                "defaultType": "spot",
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
            },
            "timeout": timeout_ms,
            "rateLimit": 1,
        }

    # -- the simulated exchange ------------------------------------------------------------------

    def closed_until(self, now: float | None = None) -> pd.DataFrame:
        """The candles closed at `now` (default: the clock's now), as served."""
        now_ms = (self.now() if now is None else now) * 1000
        return self.frame[self.ts_ms + self.step_ms <= now_ms]

    def injected(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.log:
            for f in s.faults:
                counts[f] = counts.get(f, 0) + 1
        return counts

    def _exchange_info(self, now: float) -> dict[str, Any]:
        base, quote = self.symbol.split("/")
        return {
            "timezone": "UTC",
            "serverTime": int(now * 1000),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 6000,
                },
            ],
            "exchangeFilters": [],
            "symbols": [
                {
                    "symbol": self.market_id,
                    "status": "TRADING",
                    "baseAsset": base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT"],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "quoteOrderQtyMarketAllowed": True,
                    "allowTrailingStop": True,
                    "cancelReplaceAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": "0.01000000",
                            "maxPrice": "1000000.00000000",
                            "tickSize": "0.01000000",
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": "0.00001000",
                            "maxQty": "9000.00000000",
                            "stepSize": "0.00001000",
                        },
                        {
                            "filterType": "NOTIONAL",
                            "minNotional": "5.00000000",
                            "applyMinToMarket": True,
                            "maxNotional": "9000000.00000000",
                            "applyMaxToMarket": False,
                            "avgPriceMins": 5,
                        },
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER"],
                }
            ],
        }

    def _kline(self, i: int, forming_at: float | None = None) -> list[Any]:
        """Binance's 12-field kline; a forming candle has provisional values (half the move)."""
        o, h, lo, c, v = self.values[i]
        if forming_at is not None:
            c = o + (c - o) * 0.5
            h, lo, v = max(o, c), min(o, c), v * 0.5
        t = int(self.ts_ms[i])
        return [t, _num(o), _num(h), _num(lo), _num(c), _num(v), t + self.step_ms - 1,
                _num(v * c), 100, _num(v / 2), _num(v * c / 2), "0"]  # fmt: skip

    def _klines(self, params: dict[str, str], served: Served, content: bool) -> list[list[Any]]:
        if params.get("symbol") != self.market_id:
            raise KeyError(params.get("symbol"))
        limit = min(int(params.get("limit", 500)), 1000)
        start = int(params.get("startTime", 0))
        now_ms = served.now * 1000
        lo = int(np.searchsorted(self.ts_ms, start))
        rows: list[list[Any]] = []
        for i in range(lo, len(self.ts_ms)):
            if len(rows) == limit or self.ts_ms[i] > now_ms:
                break
            forming = self.ts_ms[i] + self.step_ms > now_ms
            rows.append(self._kline(i, served.now if forming else None))
            if forming:
                served.forming = int(self.ts_ms[i])
                served.faults.append("forming")
        closed = [r for r in rows if r[0] != served.forming]
        due = self.content_faults and self.content_faults[0][0] <= self.klines
        if content and due and len(closed) >= 3:
            kind = self.content_faults.pop(0)[1]
            served.faults.append(kind)
            if kind == "gap":
                rows.remove(closed[1])
            elif kind == "repeat":
                rows[2:2] = [list(closed[0]), list(closed[1])]
            elif kind == "out_of_order":
                rows[0], rows[1] = rows[1], rows[0]
            elif kind == "nan":
                rows[1] = [*rows[1][:2], "NaN", *rows[1][3:]]
        served.closed = [int(r[0]) for r in rows if r[0] != served.forming]
        return rows

    # -- HTTP ------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reads `server.log`

            def _send(self, status: int, body: str, ctype: str, extra: dict[str, str]) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(url.query).items()}
                with server._lock:
                    served = Served(len(server.log) + 1, url.path, params, server.now(), 200)
                    server.log.append(served)
                    fault = None
                    if url.path == "/api/v3/klines":
                        server.klines += 1
                        fault = server.http_faults.get(server.klines)
                        if fault == "down":
                            server.down = True
                    if server.down:
                        fault = "503"
                    if fault is not None:
                        served.faults.append(fault)
                json_type = "application/json;charset=UTF-8"
                if fault == "timeout":
                    served.status = 0
                    server._released.wait(server.timeout_hold_s)  # the client gives up first
                    self.close_connection = True
                    return
                if fault in ("500", "502", "503"):
                    code = int(fault)
                    served.status = code
                    page = _HTML_ERROR.format(code=code, reason=_REASONS[code])
                    self._send(code, page, "text/html", {})
                    return
                if fault == "429":
                    served.status = 429
                    body = json.dumps({"code": -1003, "msg": "Too many requests; current limit "
                                       "of IP(127.0.0.1) is 6000 requests per minute."})  # fmt: skip
                    self._send(429, body, json_type, {"Retry-After": str(server.retry_after_s)})
                    return
                if fault == "invalid":
                    self._send(200, _HTML_ERROR.format(code=200, reason="OK"), "text/html", {})
                    return
                try:
                    if url.path == "/api/v3/exchangeInfo":
                        payload: Any = server._exchange_info(served.now)
                    elif url.path == "/api/v3/klines":
                        payload = server._klines(params, served, content=fault is None)
                    else:
                        raise KeyError(url.path)
                except (KeyError, ValueError) as e:
                    served.status = 400
                    body = json.dumps({"code": -1121, "msg": f"Invalid symbol or path ({e})."})
                    self._send(400, body, json_type, {})
                    return
                body = json.dumps(payload, separators=(",", ":"))
                if fault == "truncated":
                    body = body[: len(body) // 2]
                self._send(200, body, json_type, {})

        return Handler
