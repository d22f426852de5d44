"""The demo's apps. Each is a plain HTTP server that knows nothing of the mesh: it calls
other services by name (`http://catalog.demo/...`) through HTTP_PROXY, which
`gossamer run` points at its proxy.

    python -m gossamer.demo.apps web --listen 8080
    python -m gossamer.demo.apps loadgen --target http://web.demo/ --rps 40 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
from collections.abc import Callable

from aiohttp import ClientError, ClientSession, ClientTimeout, web


def _app(routes: list[web.RouteDef]) -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    return app


def catalog() -> web.Application:
    items = [{"id": i, "name": name} for i, name in enumerate(["tea", "cup", "pot", "tray"], 1)]

    async def list_items(request: web.Request) -> web.Response:
        await asyncio.sleep(random.uniform(0.001, 0.005))
        return web.json_response(items)

    return _app([web.get("/items", list_items)])


def ratings(failure_rate: float) -> web.Application:
    async def rating(request: web.Request) -> web.Response:
        # Slower than the rest, and now and then it fails: the demo's table shows it.
        await asyncio.sleep(random.uniform(0.005, 0.04))
        if random.random() < failure_rate:
            return web.json_response({"error": "ratings backend overloaded"}, status=500)
        return web.json_response({"id": request.match_info["id"], "stars": random.randint(3, 5)})

    return _app([web.get("/ratings/{id}", rating)])


def echo(name: str) -> web.Application:
    """Answers who served the request and what it saw: tests and benchmarks use it."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        status = request.path.removeprefix("/status/")
        if status.isdigit() and 200 <= int(status) <= 599:  # /status/503: that status
            return web.json_response(
                {"servedBy": name, "status": int(status)},
                status=int(status),
                headers={"x-served-by": name},
            )
        if request.path == "/bytes":  # /bytes?n=N: a large response, streamed
            n = int(request.query.get("n", "0"))
            response = web.StreamResponse(headers={"x-served-by": name})
            response.content_length = n
            await response.prepare(request)
            chunk = b"x" * 65536
            while n > 0:
                await response.write(chunk[: min(n, len(chunk))])
                n -= len(chunk)
            return response
        return web.json_response(
            {
                "servedBy": name,
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "bodyBytes": len(body),
            },
            headers={"x-served-by": name},
        )

    return _app([web.route("*", "/{tail:.*}", answer)])


def frontend() -> web.Application:
    async def on_startup(app: web.Application) -> None:
        app["http"] = ClientSession(trust_env=True, timeout=ClientTimeout(total=5))

    async def on_cleanup(app: web.Application) -> None:
        await app["http"].close()

    async def index(request: web.Request) -> web.Response:
        http: ClientSession = request.app["http"]
        item = random.randint(1, 4)
        try:
            async with http.get("http://catalog.demo/items") as r:
                if r.status != 200:
                    return web.json_response({"error": f"catalog: {r.status}"}, status=502)
                items = await r.json()
        except ClientError as err:
            return web.json_response({"error": f"catalog: {err}"}, status=502)
        stars = None
        with contextlib.suppress(ClientError):
            async with http.get(f"http://ratings.demo/ratings/{item}") as r:
                if r.status == 200:
                    stars = (await r.json())["stars"]
        # Ratings are optional: the page degrades instead of failing.
        return web.json_response({"items": items, "featured": item, "stars": stars})

    app = _app([web.get("/", index)])
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def loadgen(target: str, rps: float, duration: float, concurrency: int) -> None:
    """Open-loop load at a fixed rate, bounded in time and in requests in flight."""
    sent = ok = 0
    deadline = time.monotonic() + duration
    gate = asyncio.Semaphore(concurrency)
    async with ClientSession(trust_env=True, timeout=ClientTimeout(total=5)) as http:

        async def one() -> None:
            nonlocal ok
            try:
                async with http.get(target) as r:
                    await r.read()
                    ok += r.status < 500
            except (ClientError, TimeoutError):
                pass
            finally:
                gate.release()

        tasks: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            await gate.acquire()
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            next_at += 1 / rps
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"sent": sent, "ok": ok}), flush=True)


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["web", "catalog", "ratings", "echo", "loadgen"])
    parser.add_argument("--name", default="echo", help="echo only: the name it answers with")
    parser.add_argument("--listen", type=int, default=8080, help="port (servers)")
    parser.add_argument("--failure-rate", type=float, default=0.05, help="ratings only")
    parser.add_argument("--target", default="http://web.demo/", help="loadgen only")
    parser.add_argument("--rps", type=float, default=40.0, help="loadgen only")
    parser.add_argument("--duration", type=float, default=60.0, help="loadgen only")
    parser.add_argument("--concurrency", type=int, default=32, help="loadgen only")
    args = parser.parse_args()
    if args.role == "loadgen":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(loadgen(args.target, args.rps, args.duration, args.concurrency))
        return
    builders: dict[str, Callable[[], web.Application]] = {
        "web": frontend,
        "catalog": catalog,
        "ratings": lambda: ratings(args.failure_rate),
        "echo": lambda: echo(args.name),
    }
    built = builders[args.role]()
    asyncio.run(_serve(built, args.listen))


if __name__ == "__main__":
    main()
