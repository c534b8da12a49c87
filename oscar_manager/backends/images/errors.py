"""Why an image could not be had: each a sentence the job's log or the /run caller sees."""

from __future__ import annotations

from oscar_manager.errors import OscarError


class ImagePullFailed(OscarError):
    """The registry answered with an error (no such image, authentication required, a server error), or
    sent something else than it promised (a digest that does not match)."""

    status_code = 502


class RegistryUnreachable(ImagePullFailed):
    """Nothing answered at the registry's address (no route, no name, refused, timed out)."""

    status_code = 503


class ImageRefused(OscarError):
    """The image itself cannot be run here: another architecture, an unsafe or unsupported layer."""

    status_code = 422


class ImageTooLarge(ImageRefused):
    """The image does not fit in the image cache's size bound."""

    status_code = 507
