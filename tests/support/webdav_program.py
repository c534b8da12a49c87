"""A WebDAV server for the tests, run as its own process: wsgidav (a maintained WebDAV server from PyPI)
on its cheroot HTTP server, serving one folder with HTTP Basic for one user, optionally over TLS.

    python -m tests.support.webdav_program ROOT PORT USER PASSWORD [CERT KEY]
"""

from __future__ import annotations

import sys

from cheroot import wsgi
from wsgidav.wsgidav_app import WsgiDAVApp


def main(argv: list[str]) -> None:
    root, port, user, password, *tls = argv
    app = WsgiDAVApp(
        {
            "provider_mapping": {"/": root},
            "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
            "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
            "lock_storage": True,
            "dir_browser": {"enable": False},
            "verbose": 1,
            "logging": {"enable": False},
        }
    )
    server = wsgi.Server(("127.0.0.1", int(port)), app, numthreads=4)
    if tls:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(tls[0], tls[1])
    server.safe_start()


if __name__ == "__main__":
    main(sys.argv[1:])
