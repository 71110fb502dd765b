#!/usr/bin/env bash
# A three-node TokMesh cluster on this machine, from nothing: one etcd, a CA and three
# node certificates (openssl), three tokmesh-server processes on loopback ports.
#
#   bash scripts/cluster-demo.sh [DIR]     # DIR defaults to ./cluster-demo
#
# It leaves everything running and prints how to use and stop it. Needs `etcd` (Debian:
# etcd-server), `openssl` and `tokmesh-server` on PATH. Ports: etcd 2379/2380, node N
# HTTP 508N, RESP 638N, cluster 534N.
set -euo pipefail

dir=${1:-./cluster-demo}
mkdir -p "$dir"
cd "$dir"

# One CA per cluster; each node's certificate names the node (CN = node id), covers the
# address peers dial (127.0.0.1) and may be used as client and as server.
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=tokmesh-demo-ca" -keyout ca.key -out ca.crt 2>/dev/null
fi
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' > node.ext
for n in 1 2 3; do
  [ -f "node$n.crt" ] && continue
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=tmnd-demo$n" \
    -keyout "node$n.key" -out "node$n.csr" 2>/dev/null
  openssl x509 -req -in "node$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile node.ext -out "node$n.crt" 2>/dev/null
  chmod 600 "node$n.key"
done

# The control plane.
etcd --name demo --data-dir etcd-data \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 --log-level warn > etcd.log 2>&1 &
echo $! > etcd.pid

# Three nodes: same cluster settings, their own ports, data and certificate.
for n in 1 2 3; do
  mkdir -p "node$n"
  cat > "node$n/config.yaml" <<EOF
server:
  http: {address: "127.0.0.1:508$n"}
  redis: {enabled: true, address: "127.0.0.1:638$n"}
  local: {socket_path: "$PWD/node$n/tokmesh.sock"}
storage:
  wal: {dir: "$PWD/node$n/data/wal"}
  snapshot: {dir: "$PWD/node$n/data/snapshots"}
cluster:
  enabled: true
  node_id: "tmnd-demo$n"
  listen_address: "127.0.0.1:534$n"
  advertise_address: "127.0.0.1:534$n"
  tls:
    cert_file: "$PWD/node$n.crt"
    key_file: "$PWD/node$n.key"
    client_ca_file: "$PWD/ca.crt"
  etcd:
    endpoints: ["http://127.0.0.1:2379"]
  bootstrap:
    expect_nodes: 3
  data:
    # Each shard on two nodes: kill one and its shards fail over to the others.
    replication_factor: 2
EOF
  tokmesh-server --config "node$n/config.yaml" > "node$n/server.log" 2>&1 &
  echo $! > "node$n/pid"
done

for n in 1 2 3; do
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:508$n/ready" > /dev/null 2>&1; then break; fi
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:508$n/ready" || { echo "node $n not ready; see $dir/node$n/server.log" >&2; exit 1; }
  echo
done

cat <<EOF
Three nodes are ready. An admin key (stored in etcd, valid on every node):
  KEY=\$(tokmesh-cli -t socket:$PWD/node1/tokmesh.sock apikey create-emergency -q)
A session made on node 1, validated on node 3:
  tokmesh-cli -t http://127.0.0.1:5081 -k "\$KEY" session create -u alice --ttl 1h
  curl -H "Authorization: Bearer \$KEY" -d '{"token":"tmtk_..."}' http://127.0.0.1:5083/tokens/validate
Stop everything:
  kill \$(cat $PWD/node*/pid) && kill \$(cat $PWD/etcd.pid)
EOF
