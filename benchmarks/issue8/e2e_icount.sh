#!/bin/bash
# usage: e2e_icount.sh FASTMIRROR_BIN N PERCENT -> user-space instructions of the proxy process
# One fastmirror under callgrind in front of a uvloop primary (and, for PERCENT > 0, a
# uvloop shadow) that answer like nginx; N sequential keep-alive requests from one client.
# Per request = (count at N2 - count at N1) / (N2 - N1): start-up and shutdown cancel out.
BIN=$1; N=$2; PCT=$3; PY=${LAB_PY:-python3}
PP=$((30000 + RANDOM % 1000)); SP=$((PP+1000)); LP=$((PP+2000)); AP=$((PP+3000))
SERVER='
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
    await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await asyncio.sleep(600)
uvloop.run(main())
'
$PY -c "$SERVER" "$PP" & UP=$!
$PY -c "$SERVER" "$SP" & US=$!
LOG=$(mktemp)
valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" --listen 127.0.0.1:$LP \
  --primary 127.0.0.1:$PP --shadow 127.0.0.1:$SP --mirror-percent "$PCT" --admin off \
  --log-level warning 2>"$LOG" &
PX=$!
$PY - "$LP" "$N" <<'PY'
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
time.sleep(0.5)   # the last copies reach the shadow
s.close()
PY
kill -INT $PX; wait $PX; kill $UP $US; wait $UP $US 2>/dev/null
grep -o "Collected : [0-9]*" "$LOG" | grep -o "[0-9]*$"; rm -f "$LOG"
