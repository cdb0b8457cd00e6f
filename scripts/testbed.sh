#!/usr/bin/env bash
# A multi-host test bed on one machine: N network namespaces, each a "host".
#
#   scripts/testbed.sh up N [--rate 1gbit] [--delay 1ms] [--net 10.77.0] [--dir DIR] [--name P]
#   scripts/testbed.sh down [--dir DIR] [--name P]
#   scripts/testbed.sh status [--dir DIR] [--name P]
#
# Host i is the namespace ss-h<i> (P<i> with --name P), with one interface
# eth0 at <net>.<i+1>/24, the other end of a veth pair on a bridge that lives
# in a namespace of its own (ss-hub; Phub), so the bed's traffic never touches
# this machine's own network, and beds of different names and --net can be up
# at once.
# Each host gets its own hostname too (a UTS namespace entered by the run
# scripts), so ranks report ss-h0, ss-h1, ...  --rate and --delay shape every
# host's eth0 egress with tc netem (a message between two hosts crosses one of
# them: the sender's); without netem in the kernel, --rate falls back to a
# token bucket (tbf) and --delay fails.
#
# `up` writes into DIR (default /tmp/ss-testbed):
#   hostfile    one "<address> slots=64" line per host, for mpirun
#   rsh-agent   mpirun's --mca plm_rsh_agent: "rsh-agent <address> <command>"
#               runs the command in that host's namespace
#   mpirun      mpirun started on host 0 with the bed's hostfile, agent, and
#               Open MPI's TCP BTL and out-of-band channel restricted to the
#               bed's network; pass it the usual -np ... program ...
#   on          "on <i> <command...>": a command on host i
#   env         NET, N, PREFIX as shell assignments
# `up` on a bed that is already up takes it down first; `down` on none is a
# no-op.  Needs root (network namespaces) and iproute2.
set -euo pipefail

die() { echo "testbed: $*" >&2; exit 1; }

cmd=${1:-}
[ -n "$cmd" ] || die "usage: testbed.sh up N [--rate R] [--delay D] [--net A.B.C] [--dir DIR] | down | status"
shift
n=0
if [ "$cmd" = up ]; then
  [ $# -ge 1 ] || die "up needs the number of hosts"
  n=$1
  shift
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "hosts: '$n' is not in 1..200"
fi
rate="" delay="" net=10.77.0 dir=/tmp/ss-testbed prefix=ss-h hub=ss-hub
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=${2:?--rate needs a value (e.g. 1gbit)}; shift 2 ;;
    --delay) delay=${2:?--delay needs a value (e.g. 1ms)}; shift 2 ;;
    --net) net=${2:?--net needs the first three octets (e.g. 10.77.0)}; shift 2 ;;
    --dir) dir=${2:?--dir needs a folder}; shift 2 ;;
    --name) prefix=${2:?--name needs a prefix (e.g. ss-b)}; hub=${prefix}hub; shift 2 ;;
    *) die "unknown option '$1'" ;;
  esac
done
[[ "$prefix" =~ ^[a-z][a-z0-9-]{0,7}$ ]] || die "--name '$prefix': 1-8 of a-z, 0-9, '-', starting with a letter"
[[ "$net" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--net '$net': expected three octets such as 10.77.0"

down() {
  # Every namespace of the bed, whatever N it was brought up with.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in
      "$hub"|"$prefix"[0-9]*) ip netns del "$ns" 2>/dev/null || true ;;
    esac
  done
  rm -rf "$dir"
}

case "$cmd" in
  down) down; exit 0 ;;
  status)
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^($hub|$prefix[0-9]+)$" || echo "testbed: down"
    exit 0 ;;
  up) ;;
  *) die "unknown command '$cmd' (up, down, status)" ;;
esac

[ "$(id -u)" = 0 ] || die "network namespaces need root"
command -v ip >/dev/null || die "'ip' (iproute2) not found"
[ -z "$rate$delay" ] || command -v tc >/dev/null || die "--rate/--delay need 'tc' (iproute2)"
down
# Whatever stops the set-up half way (a failed command, a refused option)
# takes the bed down again.
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "testbed: setting up failed; taking it down" >&2; down; fi' EXIT

ip netns add "$hub"
ip -n "$hub" link set lo up
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
for ((i = 0; i < n; i++)); do
  h=$prefix$i
  ip netns add "$h"
  ip -n "$h" link set lo up
  # Created in the hub, the host end moved into its namespace and renamed.
  ip -n "$hub" link add "p$i" type veth peer name "e$i"
  ip -n "$hub" link set "e$i" netns "$h"
  ip -n "$h" link set "e$i" name eth0
  ip -n "$hub" link set "p$i" master br0
  ip -n "$hub" link set "p$i" up
  ip -n "$h" addr add "$net.$((i + 1))/24" dev eth0
  ip -n "$h" link set eth0 up
  if [ -n "$rate$delay" ]; then
    # netem for rate and delay; a kernel without sch_netem can still cap the
    # rate with a token bucket (tbf), but has no way to add delay.
    if ! ip netns exec "$h" tc qdisc add dev eth0 root netem ${rate:+rate "$rate"} \
           ${delay:+delay "$delay"} 2>/dev/null; then
      [ -z "$delay" ] || die "--delay needs tc's netem qdisc, which this kernel lacks (sch_netem)"
      ip netns exec "$h" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kbit latency 50ms
      [ "$i" -gt 0 ] || echo "testbed: no netem in this kernel: --rate $rate by a token bucket (tbf)"
    fi
  fi
done

mkdir -p "$dir"
: > "$dir/hostfile"
for ((i = 0; i < n; i++)); do echo "$net.$((i + 1)) slots=64" >> "$dir/hostfile"; done
printf 'NET=%s\nN=%s\nPREFIX=%s\n' "$net" "$n" "$prefix" > "$dir/env"

# on <i> <command...>: host i's network and hostname.
cat > "$dir/on" <<EOF
#!/bin/sh
i=\$1
shift
exec ip netns exec $prefix\$i unshare --uts sh -c 'hostname $prefix'\$i'; exec "\$@"' sh "\$@"
EOF

# Open MPI calls the agent as "<agent> [options] <host> <command>"; the host
# is one of the hostfile's addresses, the command a shell line.
cat > "$dir/rsh-agent" <<EOF
#!/bin/sh
while [ \$# -gt 0 ]; do
  case "\$1" in -*) shift ;; *) break ;; esac
done
host=\$1
shift
case "\$host" in
  $net.*) i=\$((\${host##*.} - 1)) ;;
  *) echo "rsh-agent: '\$host' is not a host of the test bed ($net.x)" >&2; exit 255 ;;
esac
exec ip netns exec $prefix\$i unshare --uts sh -c "hostname $prefix\$i; \$*"
EOF

cat > "$dir/mpirun" <<EOF
#!/bin/sh
exec "$dir/on" 0 mpirun --hostfile "$dir/hostfile" --mca plm_rsh_agent "$dir/rsh-agent" \\
  --mca btl tcp,self --mca btl_tcp_if_include $net.0/24 --mca oob_tcp_if_include $net.0/24 \\
  "\$@"
EOF
chmod +x "$dir/on" "$dir/rsh-agent" "$dir/mpirun"
trap - EXIT
echo "testbed: $n hosts ${prefix}0..$prefix$((n - 1)) at $net.1..$net.$n${rate:+, rate $rate}${delay:+, delay $delay}; files in $dir"
