#!/bin/bash
# usage: e2e_icount.sh VENV N  -> prints total instructions of the proxy process
V=$1; N=$2; PP=$((30000 + RANDOM % 1000)); LP=$((PP+1000)); AP=$((PP+2000))
/tmp/fm-before/bin/python - "$PP" <<'PY' &
import asyncio, sys, uvloop
BODY = b"x" * 100
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.b = b""
    def data_received(self, d):
        self.b += d
        while b"\r\n\r\n" in self.b:
            _, self.b = self.b.split(b"\r\n\r\n", 1)
            self.t.write(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + BODY)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await asyncio.sleep(600)
uvloop.run(main())
PY
UP=$!
valgrind --tool=callgrind --callgrind-out-file=/dev/null /tmp/fm-$V/bin/fastmirror --listen 127.0.0.1:$LP --primary 127.0.0.1:$PP --admin off --log-level warning 2>/tmp/e2e.$V.$N.log &
PX=$!
/tmp/fm-before/bin/python - "$LP" "$N" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(600):
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError: time.sleep(0.1)
req = b"GET /bench?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
for _ in range(n):
    s.sendall(req); got = b""
    while not got.endswith(b"x" * 100): got += s.recv(65536)
s.close()
PY
kill -INT $PX; wait $PX; kill $UP; wait $UP 2>/dev/null
grep -o "Collected : [0-9]*" /tmp/e2e.$V.$N.log | grep -o "[0-9]*$"
