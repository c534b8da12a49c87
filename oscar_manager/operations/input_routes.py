"""Every service input's route, kept between reads: the bucket watcher, the MinIO listener and the
reconciler ask for them again after each change to services, and reading 10,000 services' inputs is a
few hundred milliseconds of CPU.

Kept by service: a change this process commits is read again for the services it names (the database's
journal, as for the list of services), the others kept; a change committed by another process shows
within the seconds the database's service cache trusts its copies for (``SERVICE_CACHE_SECONDS``), after
which every route is read again.
"""

from __future__ import annotations

import asyncio

from oscar_manager.domain.events import InputRoute
from oscar_manager.domain.service import Service
from oscar_manager.registry import Database
from oscar_manager.registry.database import SERVICE_CACHE_SECONDS


class InputRoutes:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._by_service: dict[str, list[InputRoute]] | None = None
        self._routes: list[InputRoute] = []
        self._generation = 0  # the database's services generation they were read at
        self._checked = 0.0  # loop time of the last full read

    async def current(self) -> list[InputRoute]:
        """The routes as of this call or later (a change committed by this process before it included)."""
        database = self._database
        # Taken before reading: a change committed meanwhile is read again by the next call.
        generation, now = database.services_generation, asyncio.get_running_loop().time()
        by_service = self._by_service
        if by_service is not None and now - self._checked < SERVICE_CACHE_SECONDS:
            if generation == self._generation:
                return list(self._routes)
            changed = database.services_changed_since(self._generation)
            if changed is not None:
                async with database.reading() as tx:
                    fresh = await tx.services.input_routes(sorted(changed))
                patched = {name: routes for name, routes in by_service.items() if name not in changed}
                self._keep(_by_service(fresh, into=patched), generation, self._checked)
                return list(self._routes)
        async with database.reading() as tx:
            routes = await tx.services.input_routes()
        self._keep(_by_service(routes, into={}), generation, now)
        return list(self._routes)

    async def on_provider_type(self, provider_type: str) -> tuple[list[InputRoute], list[Service]]:
        """The routes of the inputs on ``provider_type`` providers, and those inputs' services by name (a
        source that consumes them for itself: Kafka topics, S3 queues)."""
        routes = [route for route in await self.current() if route.provider.startswith(f"{provider_type}.")]
        names = sorted({route.service for route in routes})
        async with self._database.reading() as tx:
            services = sorted(await tx.services.get_many(names), key=lambda service: service.name)
        return routes, services

    def _keep(self, by_service: dict[str, list[InputRoute]], generation: int, checked: float) -> None:
        self._by_service = by_service
        self._routes = [route for routes in by_service.values() for route in routes]
        self._generation, self._checked = generation, checked


def _by_service(
    routes: list[InputRoute], *, into: dict[str, list[InputRoute]]
) -> dict[str, list[InputRoute]]:
    for route in routes:
        into.setdefault(route.service, []).append(route)
    return into
