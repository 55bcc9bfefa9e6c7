"""Seed 003 §5: Flask with threaded=True, `GET /` answers
`Hello from Multi-threaded Flask Server!` (the seed binds 0.0.0.0; loopback here)."""
import logging

from flask import Flask

from _port import port

app = Flask(__name__)
# The seed logs every request through werkzeug; keep it (the cost is part of the
# seed), but quiet enough not to flood a terminal under load when run by hand.
logging.getLogger("werkzeug").setLevel(logging.INFO)


@app.route("/")
def home():
    return "Hello from Multi-threaded Flask Server!"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=port(8080), threaded=True)
