"""The FastAPI application: routers, the one error handler, offline API docs, start-up and shut-down."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from oscar_manager import __version__
from oscar_manager.api.routes import buckets, events, health, invocations, logs, services, system
from oscar_manager.auth.basic import BasicAuthenticator
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.operations.system import git_commit
from oscar_manager.runtime import Runtime
from oscar_manager.settings import Settings

log = logging.getLogger("oscar_manager")

_SWAGGER_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
_STATIC = "/static/docs"

DESCRIPTION = """A Python re-implementation of the OSCAR Manager API.

Authenticate with HTTP Basic (the admin user, `oscar` unless `OSCAR_USERNAME` says otherwise).
Service definitions are accepted as JSON, or as YAML FDL documents (`functions.oscar`)."""


def error_body(error: str, detail: str) -> dict[str, str]:
    return {"error": error, "detail": detail}


async def _oscar_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OscarError)
    return JSONResponse(error_body(type(exc).__name__, exc.message), exc.status_code, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # Upstream answers bad input with 400; FastAPI's default would be 422.
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return JSONResponse(error_body("BadRequest", "; ".join(parts)), 400)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    generated = not settings.oscar_password
    settings = settings.with_admin_password()
    app.state.settings = settings
    app.state.authenticator = BasicAuthenticator(
        username=settings.oscar_username, password=settings.oscar_password
    )
    app.state.git_commit = git_commit(settings)
    async with Runtime.open(settings) as runtime:
        # The routers read these lower-level objects; they never see the runtime itself.
        app.state.database = runtime.database
        app.state.backend = runtime.backend
        app.state.stores = runtime.stores
        app.state.intake = runtime.intake
        app.state.presigner = runtime.presigner
        app.state.webhook_rules = runtime.webhook_rules
        app.state.webhook_token = runtime.webhook_token
        app.state.services_changed = runtime.services_changed
        app.state.event_status = runtime.event_status
        _announce(settings, generated=generated)
        yield


def _announce(settings: Settings, *, generated: bool) -> None:
    if generated:
        log.warning(
            "Basic auth: user %r, generated password %r (kept in %s; set OSCAR_PASSWORD to choose one)",
            settings.oscar_username,
            settings.oscar_password,
            settings.password_file,
        )


def _install_docs(app: FastAPI) -> None:
    """Swagger UI and ReDoc from assets shipped in a package: FastAPI's defaults load them from a CDN."""
    app.mount(_STATIC, StaticFiles(directory=_SWAGGER_ASSETS), name="docs-static")
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="OSCAR Manager API",
            swagger_js_url=f"{_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{_STATIC}/favicon.png",
            oauth2_redirect_url=oauth2_redirect,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="OSCAR Manager API",
            redoc_js_url=f"{_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{_STATIC}/favicon.png",
            with_google_fonts=False,
        )


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    service_schema = Service.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(service_schema.pop("$defs", {}))
    schemas["Service"] = service_schema
    components["securitySchemes"] = {"BasicAuth": {"type": "http", "scheme": "basic"}}
    for path, operations in schema["paths"].items():
        if path.startswith("/system"):
            for operation in operations.values():
                operation["security"] = [{"BasicAuth": []}]
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="OSCAR Manager",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.settings = settings or Settings()
    app.add_exception_handler(OscarError, _oscar_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for router in (
        health.router,
        system.router,
        services.router,
        invocations.router,
        logs.router,
        buckets.router,
        buckets.presigned_router,
        events.router,
    ):
        app.include_router(router)
    _install_docs(app)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app
