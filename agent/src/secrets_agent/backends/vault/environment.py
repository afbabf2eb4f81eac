"""What the environment gives the Vault client's HTTP session, read once at start.

requests consults the environment on every request: the proxy variables (scanning every
variable, twice), a netrc file, and the CA bundle variables; with a few dozen variables that is
~200 µs of CPU per Vault read, a quarter of the read. The agent's environment does not change
while it runs, so the answers are taken once here: the CA bundle goes to the client as its
``verify``, and when no proxy variable is set and no netrc file exists (each per-request lookup
would find nothing, whatever the URL) the session stops looking. Otherwise requests keeps
reading the environment per request, as it does in a task process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

NETRC_FILES = (".netrc", "_netrc")  # where requests looks without $NETRC


def ca_bundle(verify: bool | str, environ: Mapping[str, str] = os.environ) -> bool | str:
    """``verify`` as requests resolves it per request: True gives way to REQUESTS_CA_BUNDLE,
    then CURL_CA_BUNDLE, when either is set."""
    if verify is True:
        return environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or True
    return verify


def inert(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether requests' per-request environment lookups would find nothing for any URL."""
    # urllib's getproxies_environment: any *_proxy variable, in any case, with a value.
    if any(value and name.lower().endswith("_proxy") for name, value in environ.items()):
        return False
    named = environ.get("NETRC")
    places = (named,) if named else tuple(f"~/{name}" for name in NETRC_FILES)
    return not any(os.path.exists(os.path.expanduser(place)) for place in places)


def direct(url: str) -> bool:
    """Whether requests would send a request for ``url`` straight to it: no proxy for it in the
    environment (``no_proxy`` counted) and no netrc login for its host."""
    from requests.utils import get_environ_proxies, get_netrc_auth, select_proxy

    return select_proxy(url, get_environ_proxies(url)) is None and get_netrc_auth(url) is None
