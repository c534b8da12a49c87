"""The FastAPI application: routers, the error handlers, offline API docs, start-up and shut-down."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from oscar_manager import __version__
from oscar_manager.api.error_answers import CatchAll, document_errors, install_error_handlers
from oscar_manager.api.proxy import ExposedClients
from oscar_manager.api.routes import (
    buckets,
    deployment,
    disabled,
    events,
    exposed,
    health,
    invocations,
    logs,
    services,
    system,
)
from oscar_manager.api.s3.server import s3_face
from oscar_manager.auth.authenticator import build_authenticator
from oscar_manager.auth.groups import realm
from oscar_manager.domain.service import Service
from oscar_manager.operations.system import git_commit
from oscar_manager.runtime import Runtime
from oscar_manager.settings import Settings

log = logging.getLogger("oscar_manager")

_SWAGGER_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
_STATIC = "/static/docs"

DESCRIPTION = """A Python re-implementation of the OSCAR Manager API.

Authenticate with HTTP Basic (the admin user, `oscar` unless `OSCAR_USERNAME` says otherwise).
Service definitions are accepted as JSON, or as YAML FDL documents (`functions.oscar`)."""

OIDC_DESCRIPTION = """

With OIDC enabled, users authenticate with an access token of a trusted issuer (`Authorize`: log in with
the issuer, or paste a token as `BearerAuth`); they are admitted when one of their groups is in
`OIDC_GROUPS`. `/job` and `/run` take the service's token or such a user's token."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    generated = not settings.oscar_password
    settings = settings.with_admin_password()
    app.state.settings = settings
    app.state.authenticator = authenticator = build_authenticator(settings)
    if settings.oidc_enable and not settings.oidc_issuers:
        log.warning("OIDC_ENABLE is set but OIDC_ISSUERS is empty: every bearer token will be refused")
    app.state.git_commit = git_commit(settings)
    try:
        async with Runtime.open(settings) as runtime:
            # The routers read these lower-level objects; they never see the runtime itself.
            app.state.database = runtime.database
            app.state.rendered_services = runtime.rendered_services
            app.state.backend = runtime.backend
            app.state.stores = runtime.stores
            app.state.intake = runtime.intake
            app.state.presigner = runtime.presigner
            app.state.webhook_rules = runtime.sources.webhook_rules
            app.state.kafka_brokers = runtime.sources.kafka_brokers
            app.state.webhook_token = runtime.webhook_token
            app.state.services_changed = runtime.services_changed
            app.state.event_status = runtime.event_status
            app.state.readiness = runtime.readiness
            app.state.identities = runtime.identities
            app.state.bucket_policies = runtime.bucket_policies
            app.state.queue_inputs = runtime.sources.s3_queue_access
            async with s3_face(settings, runtime.stores.default, runtime.database):
                _announce(settings, generated=generated)
                with frozen_heap():
                    yield
    finally:
        await app.state.exposed_clients.aclose()
        await authenticator.aclose()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """What start-up built (modules, models, routes, caches) is kept out of the garbage collector's walks
    while the app serves: it lives as long as the process, and walking it made each full collection a
    pause of a few hundred milliseconds for every request in flight (measured under load; the p99 of
    events arriving at 300/s). Given back to the collector at shutdown, so that a process running
    several apps one after another (the tests) can still collect them. No collection first: start-up's
    little garbage is frozen with it (and freed at shutdown), while a full collection of a large heap
    costs about a second (a test process starting an app per test paid it two thousand times)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
            init_oauth=app.swagger_ui_init_oauth,
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


def oidc_scheme_names(settings: Settings) -> list[str]:
    """One openIdConnect scheme per trusted issuer: ``OIDC``, then ``OIDC2``, ``OIDC3``..."""
    return ["OIDC" if index == 0 else f"OIDC{index + 1}" for index in range(len(settings.oidc_issuers))]


def swagger_oauth(settings: Settings) -> dict[str, Any] | None:
    """Swagger UI's log-in: authorization code with PKCE, as a public client (no secret in the page)."""
    if not settings.oidc_enable:
        return None
    scopes = ["openid", "profile", "email"]
    if any(realm(issuer) == "egi" for issuer in settings.oidc_issuers):
        scopes += ["entitlements", "eduperson_entitlement"]  # EGI Check-In lists VOs only when asked
    return {
        "clientId": settings.oidc_client_id,
        "usePkceWithAuthorizationCodeGrant": True,
        "scopes": " ".join(scopes),
    }


def _security_schemes(settings: Settings) -> dict[str, Any]:
    schemes: dict[str, Any] = {"BasicAuth": {"type": "http", "scheme": "basic"}}
    if settings.oidc_enable:
        schemes["BearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token of a trusted OIDC issuer",
        }
        for name, issuer in zip(oidc_scheme_names(settings), settings.oidc_issuers, strict=True):
            schemes[name] = {
                "type": "openIdConnect",
                "openIdConnectUrl": issuer.rstrip("/") + "/.well-known/openid-configuration",
                "description": f"Log in with {issuer}",
            }
    return schemes


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    settings: Settings = app.state.settings
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    service_schema = Service.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(service_schema.pop("$defs", {}))
    schemas["Service"] = service_schema
    components["securitySchemes"] = schemes = _security_schemes(settings)
    users: list[dict[str, list[str]]] = [{name: []} for name in schemes if name != "BasicAuth"]
    authenticated: set[tuple[str, str]] = set()
    for path, operations in schema["paths"].items():
        security: list[dict[str, list[str]]]
        if path.startswith("/system"):
            security = [{"BasicAuth": []}, *users]
        elif path.startswith(("/job/", "/run/")):
            security = users  # plus the service's own token, which is a bearer token too
        else:
            continue
        for method, operation in operations.items():
            authenticated.add((path, method))
            if security:
                operation["security"] = security
    document_errors(schema, authenticated=authenticated)
    app.openapi_schema = schema
    return schema


def _install_cors(app: FastAPI, origins: list[str]) -> None:
    """Browsers on these origins (the hosted OSCAR dashboard) may call the API with bearer tokens."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        # Credentials (cookies, the browser's remembered Basic log-in) only for origins named one by one:
        # with "*" any site could use them.
        allow_credentials="*" not in origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["X-Oscar-Job-Ids"],
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="OSCAR Manager",
        version=__version__,
        description=DESCRIPTION + (OIDC_DESCRIPTION if settings.oidc_enable else ""),
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
        swagger_ui_init_oauth=swagger_oauth(settings),
    )
    app.state.settings = settings
    app.state.exposed_clients = ExposedClients()
    install_error_handlers(app)
    # Invocations first: every event's request is matched against the routes in this order, and no
    # other router's paths can match ``/job/...`` or ``/run/...``.
    for router in (
        invocations.router,
        health.router,
        system.router,
        services.router,
        deployment.router,
        exposed.router,
        disabled.router,
        logs.router,
        buckets.router,
        buckets.presigned_router,
        events.router,
    ):
        app.include_router(router)
    app.add_middleware(CatchAll)  # before CORS, which then wraps it: its 500s carry CORS headers too
    _install_cors(app, settings.oscar_cors_origins)
    _install_docs(app)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app
