"""Whether the internet is there: a quick probe before a download is tried."""

import socket
import threading
import urllib.parse


def hosts_reachable(urls, timeout=3.0):
    """True if any URL's host accepts a TCP connection within `timeout` s."""
    hosts = sorted({urllib.parse.urlparse(u).hostname for u in urls} - {None})
    result = []

    def probe(host):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(host)
        except OSError:
            pass

    threads = [threading.Thread(target=probe, args=(h,), daemon=True) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return bool(result)
