"""The deploy demo's app: serves version.txt of its release on the socket citrusd passes as fd 3
(socket activation), and on SIGTERM finishes the request in hand before it exits."""
import http.server
import os
import signal
import socket
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("version.txt", "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("no socket from citrusd: add listen = [...] to the app")
server = http.server.HTTPServer(("", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
