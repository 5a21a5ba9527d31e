#!/bin/bash
# usage: e2e_icount.sh FASTMIRROR_BIN N PERCENT -> user-space instructions of the proxy process
# One fastmirror under callgrind in front of a uvloop primary (and, for PERCENT > 0, a
# uvloop shadow) that answer like nginx; N keep-alive requests over CONNS connections
# (default 1: sequential), each connection one request at a time.
# Per request = (count at N2 - count at N1) / (N2 - N1): start-up and shutdown cancel out.
# ROUTES=none|miss|last|edits (issue 10): adds --config with that case's [[route]] tables
# from benchmarks/issue10/route_config.py; "edits" gives the shadow as a [[shadow]] table.
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
TARGETS=(--shadow 127.0.0.1:$SP)
if [ -n "$ROUTES" ]; then
  CONF=$(mktemp --suffix=.toml)
  $PY "$(dirname "$0")/../issue10/route_config.py" "$ROUTES" 127.0.0.1:$SP >"$CONF"
  TARGETS=(--config "$CONF")
  [ "$ROUTES" = edits ] || TARGETS+=(--shadow 127.0.0.1:$SP)
fi
valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" --listen 127.0.0.1:$LP \
  --primary 127.0.0.1:$PP "${TARGETS[@]}" --mirror-percent "$PCT" --admin off \
  --log-level warning 2>"$LOG" &
PX=$!
$PY - "$LP" "$N" "${CONNS:-1}" <<'PY'
import asyncio, socket, sys, time
port, n, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for _ in range(600):
    try:
        socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.1)
REQ = b"GET /bench?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
async def client(count):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        w.write(REQ); got = b""
        while not got.endswith(b"x" * 100): got += await r.read(65536)
    w.close()
async def main():   # CONNS connections at once (as wrk -c), N requests in all
    await asyncio.gather(*(client(n // conns) for _ in range(conns)))
    await asyncio.sleep(0.5)   # the last copies reach the shadow
asyncio.run(main())
PY
kill -INT $PX; wait $PX; kill $UP $US; wait $UP $US 2>/dev/null
grep -o "Collected : [0-9]*" "$LOG" | grep -o "[0-9]*$"; rm -f "$LOG" ${CONF:+"$CONF"}
