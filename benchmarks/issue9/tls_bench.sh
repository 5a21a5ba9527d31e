#!/bin/bash
# TLS everywhere, side by side in one run: fastmirror vs nginx and Envoy, each terminating TLS at its
# listener and speaking TLS (verified, SNI localhost) to an nginx primary and shadow.
# usage: FASTMIRROR=<venv>/bin/fastmirror PY=<python with trustme> ENVOY_BIN=<envoy> tls_bench.sh [REPEATS] [SECONDS]
# Proxy on CPU 0; wrk and the upstreams on CPU 1. Ports 28100-28199 on 127.0.0.1.
set -euo pipefail
REPEATS=${1:-3}; DUR=${2:-8}
FM=${FASTMIRROR:-fastmirror}; PY=${PY:-python3}; ENVOY=${ENVOY_BIN:-envoy}
W=$(mktemp -d /tmp/fm-tls-bench.XXXXXX); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
$PY - "$W" <<'PY'
import sys, trustme
w = sys.argv[1]; ca = trustme.CA(); leaf = ca.issue_cert("localhost", "127.0.0.1")
ca.cert_pem.write_to_path(f"{w}/ca.pem")
leaf.private_key_pem.write_to_path(f"{w}/key.pem")
leaf.cert_chain_pems[0].write_to_path(f"{w}/cert.pem")
PY
nginx_conf() { # name body(server blocks)
  mkdir -p "$W/$1/logs"
  cat > "$W/$1/nginx.conf" <<CONF
worker_processes 1; pid $W/$1/nginx.pid; error_log $W/$1/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000; $2 }
CONF
}
# nginx 1.22 offers only TLS <= 1.2 unless told (ssl_protocols, proxy_ssl_protocols); fastmirror and
# Envoy speak TLS 1.3, whose resumed handshake still does an ECDHE exchange, so nginx is told too.
P13='ssl_protocols TLSv1.2 TLSv1.3;'
UP='listen 127.0.0.1:PORT ssl; '"$P13"' ssl_certificate '"$W"'/cert.pem; ssl_certificate_key '"$W"'/key.pem;
    location / { return 200 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; }'
for u in primary:28101 shadow:28102; do
  nginx_conf "${u%%:*}" "server { ${UP/PORT/${u##*:}} }"
  taskset -c 1 nginx -p "$W/${u%%:*}/" -c "$W/${u%%:*}/nginx.conf" -g 'daemon off;' & PIDS+=($!)
done
PROXY_TLS="$P13 ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;"
UPS="proxy_ssl_protocols TLSv1.2 TLSv1.3; proxy_ssl_verify on; proxy_ssl_trusted_certificate $W/ca.pem; proxy_ssl_server_name on; proxy_ssl_name localhost; proxy_ssl_session_reuse on; proxy_http_version 1.1; proxy_set_header Connection \"\";"
nginx_conf nginx-proxy "
  upstream primary { server 127.0.0.1:28101; keepalive 64; }
  upstream shadow { server 127.0.0.1:28102; keepalive 64; }
  server { listen 127.0.0.1:28120 ssl; $PROXY_TLS location / { proxy_pass https://primary; $UPS } }
  server { listen 127.0.0.1:28121 ssl; $PROXY_TLS
    location / { mirror /mirror; proxy_pass https://primary; $UPS }
    location = /mirror { internal; proxy_pass https://shadow\$request_uri; $UPS } }"
envoy_conf() { # pct -> $W/envoy-PCT.yaml
  local up='transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: ["http/1.1"]
          validation_context:
            trusted_ca: { filename: '"$W"'/ca.pem }
            match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: localhost } }]'
  cat > "$W/envoy-$1.yaml" <<YAML
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: 28140 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["http/1.1"]
            tls_certificates: [{ certificate_chain: { filename: $W/cert.pem }, private_key: { filename: $W/key.pem } }]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: primary
                  request_mirror_policies:
                  - cluster: shadow
                    runtime_fraction: { default_value: { numerator: $1, denominator: HUNDRED } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: primary
    type: STATIC
    connect_timeout: 1s
    load_assignment: { cluster_name: primary, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 28101 } } } }] }] }
    $up
  - name: shadow
    type: STATIC
    connect_timeout: 1s
    load_assignment: { cluster_name: shadow, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 28102 } } } }] }] }
    $up
YAML
}
start_point() { # contender pct -> port
  case "$1" in
    nginx) [ "$2" = 0 ] && echo 28120 || echo 28121 ;;
    fastmirror) echo 28130 ;;
    envoy) echo 28140 ;;
  esac
}
run_point() { # contender pct ("hs": no mirror, a new TLS connection per request)
  local c=$1 pct=$2 port pid hdr=()
  if [ "$pct" = hs ]; then pct=0; hdr=(-H "Connection: close"); fi
  port=$(start_point "$c" "$pct")
  if [ "$c" = nginx ]; then
    taskset -c 0 nginx -p "$W/nginx-proxy/" -c "$W/nginx-proxy/nginx.conf" -g 'daemon off;' & pid=$!
  elif [ "$c" = envoy ]; then
    envoy_conf "$pct"
    taskset -c 0 "$ENVOY" -c "$W/envoy-$pct.yaml" --concurrency 1 --disable-hot-restart \
      --log-level error >>"$W/envoy.log" 2>&1 & pid=$!
  else
    taskset -c 0 "$FM" --listen 127.0.0.1:$port --tls-cert "$W/cert.pem" --tls-key "$W/key.pem" \
      --primary https://localhost:28101 --shadow https://localhost:28102 --upstream-ca "$W/ca.pem" \
      --mirror-percent "$pct" --admin off --log-level warning 2>>"$W/fm.log" & pid=$!
  fi
  for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$port/" && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c50 -d1s "https://127.0.0.1:$port/bench?q=1" >/dev/null 2>&1 || true
  taskset -c 1 wrk -t1 -c50 -d${DUR}s --latency "${hdr[@]}" "https://127.0.0.1:$port/bench?q=1" > "$W/wrk.out" 2>&1 || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk '/Requests\/sec/ {print $2}' "$W/wrk.out"
}
sleep 1
declare -A R
for rep in $(seq "$REPEATS"); do
  for point in ${POINTS:-nginx:0 envoy:0 fastmirror:0 nginx:100 envoy:100 fastmirror:100 envoy:10 fastmirror:10 nginx:hs envoy:hs fastmirror:hs}; do
    v=$(run_point "${point%%:*}" "${point##*:}"); R[$point]="${R[$point]:-} $v"
    echo "  [rep $rep] $point -> $v req/s" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| point | req/s (median of $REPEATS x ${DUR}s) | all repeats |"
echo "|---|---:|---|"
for point in ${POINTS:-nginx:0 envoy:0 fastmirror:0 nginx:100 envoy:100 fastmirror:100 envoy:10 fastmirror:10 nginx:hs envoy:hs fastmirror:hs}; do
  echo "| $point | $(echo "${R[$point]}" | median) | ${R[$point]} |"
done
