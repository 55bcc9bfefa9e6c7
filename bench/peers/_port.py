"""The port a peer listens on: argv[1], else $PORT, else the seed's own port.

Shared by the peers so that tests and `bench compare` can run them on free ports;
everything else in each peer is the seed's code, re-typed."""
import os
import sys


def port(default):
    if len(sys.argv) > 1:
        return int(sys.argv[1])
    return int(os.environ.get("PORT", default))
