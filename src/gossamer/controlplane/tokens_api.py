"""REST endpoints for named API tokens (`gossamer api-token`) and `whoami`.

The access middleware (gossamer.controlplane.auth) has already checked the caller:
listing needs a token, creating and revoking an admin token.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from aiohttp import web

from gossamer.controlplane.auth import require_admin, require_scope
from gossamer.errors import FieldError, InvalidResource, NotFound

if TYPE_CHECKING:
    from gossamer.controlplane.server import ControlPlane

log = logging.getLogger("gossamer.controlplane.tokens")


class ApiTokensApi:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/api-tokens", self.list),
            web.post("/v1/api-tokens", self.create),
            web.delete("/v1/api-tokens/{name}", self.revoke),
            web.get("/v1/whoami", self.whoami),
        ]

    async def list(self, request: web.Request) -> web.Response:
        # Off the loop: on replicas sharing a store the tokens are a store record.
        tokens = await self.cp.astore.run(self.cp.api_tokens.list)
        return web.json_response({"items": [t.public() for t in tokens]})

    async def create(self, request: web.Request) -> web.Response:
        """`{"name": N, "scope": "read"|"admin", "ttlSeconds": S or null}`: the token,
        in this response only."""
        actor = require_admin(request)
        # Imported here: the API module imports this one to mount these routes.
        from gossamer.controlplane.api import read_json

        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidResource([FieldError("", "body must be a JSON object")], "api token")
        name, scope, ttl = body.get("name"), body.get("scope", "read"), body.get("ttlSeconds")
        if not isinstance(name, str):
            raise InvalidResource([FieldError("name", "is required")], "api token")
        if ttl is not None and (type(ttl) is not int):
            raise InvalidResource([FieldError("ttlSeconds", "must be an integer")], "api token")
        secret, token = await self.cp.astore.run(
            self.cp.api_tokens.create,
            name,
            str(scope),
            None if ttl is None else timedelta(seconds=ttl),
        )
        info = token.public()
        await self.cp.astore.run(
            self.cp.audit.record,
            actor,
            "apitoken.create",
            kind="ApiToken",
            name=name,
            detail={"scope": token.scope, "expiresAt": info["expiresAt"]},
        )
        log.info("api token %s created by %s (scope %s)", name, actor, token.scope)
        return web.json_response({**info, "token": secret})

    async def revoke(self, request: web.Request) -> web.Response:
        actor = require_admin(request)
        name = request.match_info["name"]
        token = await self.cp.astore.run(self.cp.api_tokens.revoke, name)
        await self.cp.astore.run(
            self.cp.audit.record,
            actor,
            "apitoken.revoke",
            kind="ApiToken",
            name=name,
            detail={"scope": token.scope},
        )
        log.info("api token %s revoked by %s", name, actor)
        return web.json_response(token.public())

    async def whoami(self, request: web.Request) -> web.Response:
        name = require_scope(request, "read")
        tokens = {t.name: t for t in await self.cp.astore.run(self.cp.api_tokens.list)}
        if name not in tokens:  # revoked since this request was let in
            raise NotFound("api token", name)
        return web.json_response(tokens[name].public())
