"""oscar-manager: a Python re-implementation of the OSCAR Manager."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oscar-manager")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# The level of the upstream OSCAR REST API this manager implements. Clients gate features on the
# ``version`` reported by /system/info (the dashboard needs >= v4.1.0), so that is what it reports.
OSCAR_API_VERSION = "4.1.2"
