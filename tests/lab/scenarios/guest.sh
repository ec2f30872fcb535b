# lab-scenarios: qemu-xen-guest xendm-guest
#
# The lab's realistic guest (docs/lab.md "guest group"), sourced by dom0's
# /init: an HVM guest with 512 MiB, 2 vCPUs, a file-backed ext4 root disk
# (xvda: blkback via the `block` hotplug script's loop device), a second disk
# on a loop device dom0 set up itself (xvdb, `phy:` path of the same script),
# for xendm a third one at xvdf with backendtype=qdisk (xendm must close it),
# and a NIC on the bridge xenbr0 (libxl's default type: the DM gets -netdev
# tap + -device rtl8139 and the vif-bridge script puts both vifN.0 and the
# tap vifN.0-emu on the bridge; xen-toolstack.md 3.1, 3.2, 6.2). Direct kernel
# boot of Debian's kernel with the initrd of tests/guest/mkpvguest, built by
# guest.prepare into /lab/guest/. The guest checks itself (tests/guest/
# pv-root-init); dom0 pings it over IPv6 link-local and, after the domain
# has gone, reads the nonce back from both disk images.
# Helpers: dom0-init (create, wait_marker, sample_dm, check_sandbox, put,
# fail, stepres, ...); this file's own start with guest_. Dom0's busybox sh
# runs its own applets before anything on PATH, so util-linux's losetup (for
# -f --show and its -a format, which the block script also parses) is called
# by its path.

GUEST_DOM0_LL=fe80::1          # dom0's address on xenbr0, given to the guest
GUEST_GROUP_DIR=/lab/guest
[ -r "$GUEST_GROUP_DIR/guest.conf" ] && . "$GUEST_GROUP_DIR/guest.conf"

scenario_qemu_xen_guest() { guest_scenario "$1"; }
scenario_xendm_guest() { guest_scenario "$1"; }

# guest_dom0_setup (once per dom0 boot): the /dev/std{in,out,err} and /dev/fd
# links udev makes on a real dom0 (devtmpfs has none; the block script's
# claim_lock runs `stat -L /dev/stdin` and, failing, retries for ever until
# libxl kills it after 40 s: the cause of the `block` failure xen-toolstack.md
# 6.4 reports, besides busybox's missing flock); then xenbr0 with
# GUEST_DOM0_LL: no STP, no forwarding delay, no multicast snooping
# (neighbour discovery is multicast), no DAD on dom0's address, no IPv4.
guest_dom0_setup() {
  [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
  [ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
  [ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
  [ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
  [ -e /sys/class/net/xenbr0/bridge ] && return 0
  ip link add name xenbr0 type bridge || { GUEST_WHY="ip link add xenbr0 type bridge failed"; return 1; }
  echo 0 >/sys/class/net/xenbr0/bridge/stp_state
  echo 0 >/sys/class/net/xenbr0/bridge/forward_delay
  echo 0 >/sys/class/net/xenbr0/bridge/multicast_snooping
  echo 0 >/proc/sys/net/ipv6/conf/xenbr0/accept_dad
  ip link set dev xenbr0 up || { GUEST_WHY="ip link set xenbr0 up failed"; return 1; }
  ip -6 addr add "$GUEST_DOM0_LL/64" dev xenbr0 || { GUEST_WHY="ip -6 addr add $GUEST_DOM0_LL dev xenbr0 failed"; return 1; }
  return 0
}

# guest_ll_of_mac MAC: the IPv6 link-local address Linux derives from it (EUI-64)
guest_ll_of_mac() {
  _IFS=$IFS; IFS=:; set -- $1; IFS=$_IFS
  [ $# -eq 6 ] || return 1
  printf 'fe80::%x:%x:%x:%x\n' $(((0x$1 ^ 2) * 256 + 0x$2)) $((0x$3 * 256 + 0xff)) \
    $((0xfe00 + 0x$4)) $((0x$5 * 256 + 0x$6))
}

# guest_wait_line FILE WORD T0_CS SECS NAME DMPID: waits for a line with WORD
# in FILE (a GUEST-RESULT line instead ends the wait: MARK_LINE). Returns 0
# found, 1 result line first, else wait_marker's codes 2-4 (WAIT_WHY).
guest_wait_line() {
  _n=0
  while :; do
    if [ -s "$1" ]; then
      while IFS= read -r _l; do
        case $_l in
          *"$2"*) GUEST_LINE=${_l%"$CR"}; return 0 ;;
          *GUEST-RESULT:*) find_marker "$1"; now; MARK_CS=$NOW; return 1 ;;
        esac
      done <"$1"
    fi
    now
    [ $((NOW - $3)) -lt $(($4 * 100)) ] || { WAIT_WHY="no $2 line within ${4}s"; return 2; }
    pid_alive "$6" || { WAIT_WHY="the device model (pid $6) exited before the guest printed $2"; return 4; }
    _n=$((_n + 1))
    if [ $((_n % 20)) -eq 0 ] && ! xl domid "$5" >/dev/null 2>&1; then
      WAIT_WHY="domain $5 disappeared before the guest printed $2"; return 3
    fi
    usleep 500000
  done
}

# guest_loop_gone FILE SECS: until no loop device is backed by FILE
guest_loop_gone() {
  now; _t0=$NOW
  while /usr/sbin/losetup -a 2>/dev/null | grep -q "($1)"; do
    now; [ $((NOW - _t0)) -ge $(($2 * 100)) ] && return 1
    usleep 250000
  done
  return 0
}

# guest_cfg NAME DM IMG LOOPDEV NONCE: the boot scenarios' config (write_cfg:
# the DM override) with this guest's memory, vCPUs, initrd, disks and NIC
guest_cfg() {
  write_cfg "$1" "$2" "file:$R/guest-serial.log" destroy 0
  _args=; for _w in $GUEST_ARGS; do case $_w in guest.*) ;; *) _args="$_args $_w" ;; esac; done
  sed -i -e "s/^memory = .*/memory = ${GUEST_MEMORY:-512}/" -e "s/^vcpus = .*/vcpus = ${GUEST_VCPUS:-2}/" \
    -e "s|^ramdisk = .*|ramdisk = \"$GUEST_GROUP_DIR/initrd.img\"|" \
    -e "s|^cmdline = .*|cmdline = \"console=ttyS0 panic=-1 quiet$_args guest.nonce=$5 guest.peer=$GUEST_DOM0_LL guest.wait=120\"|" \
    "/etc/xen/$1.cfg"
  # xendm only: a third disk whose backend would be the device model itself
  # (backendtype=qdisk); xendm must close it so that the guest does not wait
  _qdisk=
  if [ "$2" = xendm ]; then
    truncate -s 1M "/tmp/$1-qdisk.img"
    _qdisk=", 'format=raw,vdev=xvdf,access=rw,backendtype=qdisk,target=/tmp/$1-qdisk.img'"
  fi
  cat >>"/etc/xen/$1.cfg" <<EOF
disk = [ 'format=raw,vdev=xvda,access=rw,target=$3', 'format=raw,vdev=xvdb,access=rw,target=$4'$_qdisk ]
vif = [ '$GUEST_VIF' ]
EOF
  cp "/etc/xen/$1.cfg" "$R/xl.cfg"
}

# guest_trace_hotplug: with GUEST_TRACE_HOTPLUG=1 (LAB_GUEST_TRACE_HOTPLUG=1 on
# the host) the block and vif-bridge scripts run under `set -x` with a
# timestamp on every line (into /var/log/xen/xen-hotplug.log, which the
# scenario copies), and dom0's fork+exec cost is measured
guest_trace_hotplug() {
  [ "${GUEST_TRACE_HOTPLUG:-0}" = 1 ] || return 0
  for _s in block vif-bridge; do
    [ -e "/etc/xen/scripts/$_s.real" ] && continue
    mv "/etc/xen/scripts/$_s" "/etc/xen/scripts/$_s.real"
    printf '#!/bin/sh\nexec bash -c %s /etc/xen/scripts/%s.real "$@"\n' \
      "'PS4=\"+ \\\${EPOCHREALTIME} \"; set -x; . \"\$0\"'" "$_s" >"/etc/xen/scripts/$_s"
    chmod 755 "/etc/xen/scripts/$_s"
  done
  now; _t0=$NOW
  bash -c 'for i in 1 2 3 4 5 6 7 8 9 10; do /usr/bin/xenstore-read domid >/dev/null; done'
  stepres "trace: 10 xenstore-read forks from bash took $(since "$_t0")s"
}

guest_scenario() { # DM
  name=$S; GUEST_LOOP=
  guest_dom0_setup || { fail "dom0 setup: $GUEST_WHY"; return; }
  guest_trace_hotplug
  img=/tmp/$S-root.img; data=/tmp/$S-data.img
  cp "$GUEST_GROUP_DIR/root.img" "$img" || { fail "no $GUEST_GROUP_DIR/root.img (guest.prepare)"; return; }
  rm -f "$data"; truncate -s 1M "$data"
  GUEST_LOOP=$(/usr/sbin/losetup -f --show "$data" 2>&1) || { fail "losetup -f --show $data: $GUEST_LOOP ($(ls /dev/loop* 2>&1 | tr '\n' ' '))"; GUEST_LOOP=; return; }
  nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
  guest_cfg "$name" "$1" "$img" "$GUEST_LOOP" "$nonce"
  log "$S: xl create ($1 as device model; xvda file $img, xvdb $GUEST_LOOP, vif '$GUEST_VIF')"
  if ! create "$name" "$R/xl-create.log"; then
    put create_return_s "$(fmt_s "$CREATE_CS")"; fail "$CREATE_ERR"; guest_cleanup; return
  fi
  put create_return_s "$(fmt_s "$CREATE_CS")"
  guest_backends "$DOMID"
  stepres "create ok $(fmt_s "$CREATE_CS")s: $GUEST_BACKENDS"
  guest_run "$1"
  guest_cleanup
}

# guest_backends DOMID: GUEST_BACKENDS = what blkback/netback got (xenstore)
guest_backends() {
  _b=/local/domain/0/backend
  GUEST_MAC=$(xenstore-read "$_b/vif/$1/0/mac" 2>/dev/null)
  GUEST_BACKENDS="xvda $(xenstore-read "$_b/vbd/$1/51712/physical-device-path" 2>/dev/null || echo '?')"
  GUEST_BACKENDS="$GUEST_BACKENDS, xvdb $(xenstore-read "$_b/vbd/$1/51728/physical-device-path" 2>/dev/null || echo '?')"
  GUEST_BACKENDS="$GUEST_BACKENDS, vif mac $GUEST_MAC, bridge ports $(ls /sys/class/net/xenbr0/brif 2>/dev/null | tr '\n' ' ')"
}

# guest_run DM: from xl create to the checks after the domain has gone
guest_run() {
  guest_wait_line "$R/guest-serial.log" GUEST-NET-UP "$CREATE_T0" "$LAB_MARKER_TIMEOUT" "$name" "$DMPID"
  st=$?
  pid_alive "$DMPID" && sample_dm "$DMPID"
  case $st in
    0) ;;
    1) fail "guest reported failure: $MARK_LINE"; return ;;
    *) fail "$(marker_error $st "$R/guest-serial.log" "$name")"; return ;;
  esac
  stepres "guest network up $(since "$CREATE_T0")s after create: ${GUEST_LINE#*GUEST-NET-UP: }"
  if [ "$1" = xendm ]; then
    check_sandbox 0 || return
    guest_check_qdisk || return
  fi
  # dom0 -> guest: the guest waits for (and counts) our echo request
  ll=$(guest_ll_of_mac "$GUEST_MAC") || { fail "cannot derive the guest's link-local address from mac '$GUEST_MAC'"; return; }
  now; _t0=$NOW; pinged=
  while [ $((NOW - _t0)) -lt 6000 ]; do
    if ping6 -c 1 -W 2 "$ll%xenbr0" >"$R/dom0-ping6.txt" 2>&1; then pinged=1; break; fi
    usleep 500000; now
  done
  brctl showmacs xenbr0 >"$R/bridge-fdb.txt" 2>&1
  ip -6 neigh show dev xenbr0 >"$R/neigh.txt" 2>&1
  [ -n "$pinged" ] || { fail "dom0 got no ICMPv6 echo reply from the guest ($ll%xenbr0) within 60s; bridge fdb: $(tr '\n' ' ' <"$R/bridge-fdb.txt")"; return; }
  put guest_ping6 ok
  stepres "dom0 pinged the guest at $ll%xenbr0 ($(grep -o 'time=[0-9.]* ms' "$R/dom0-ping6.txt"))"
  wait_marker "$R/guest-serial.log" "$CREATE_T0" "$LAB_MARKER_TIMEOUT" "$name" "$DMPID"
  st=$?
  [ $st -eq 0 ] || { fail "$(marker_error $st "$R/guest-serial.log" "$name")"; return; }
  record_marker
  put guest_devices "$(echo "$MARK_LINE" | grep -o 'xvda=[^ ]* xvdb=[^ ]* eth0=[^ ]*')"
  # the guest powers off after its result line (on_poweroff=destroy); libxl
  # kills the DM first (polled without forks), then removes the devices
  wait_pid_gone "$DMPID" 60 || { fail "DM pid $DMPID still running 60s after the guest's result"; return; }
  wait_gone "$name" 60 || { fail "domain $name still exists 60s after its DM exited"; return; }
  stepres "guest powered off; domain and DM gone $(since "$MARK_CS")s after its result"
  guest_check_disks || return
  put pass true
}

# guest_check_qdisk: xendm closed the qdisk backend of xvdf (device 51792) it
# does not serve (state 6), and said so in its log; the guest reached the
# network without waiting for the disk (Linux waits up to 300 s for a
# frontend whose backend never connects)
guest_check_qdisk() {
  _qs=$(xenstore-read "/local/domain/0/backend/qdisk/$DOMID/51792/state" 2>/dev/null || echo none)
  put guest_qdisk_state "$_qs"
  [ "$_qs" = 6 ] || { fail "qdisk xvdf: backend state '$_qs', want 6 (closed by xendm); DM log tail: $(dm_log_tail "$name")"; return 1; }
  grep -q 'qdisk' "/var/log/xen/qemu-dm-$name.log" 2>/dev/null \
    || { fail "qdisk xvdf: closed, but xendm's log does not say so"; return 1; }
  stepres "qdisk xvdf (backendtype=qdisk): backend Closed (6) by xendm, logged; the guest did not wait for it"
}

# guest_check_disks: the guest's nonce is in both images once blkback and the
# block script have let go of them
guest_check_disks() {
  guest_loop_gone "$img" 30 || { fail "the block script left $img on a loop device: $(/usr/sbin/losetup -a | tr '\n' ' ')"; return 1; }
  /usr/sbin/losetup -d "$GUEST_LOOP" 2>/dev/null; GUEST_LOOP=
  mkdir -p /mnt/guest
  _out=$(mount -t ext4 -o ro,loop "$img" /mnt/guest 2>&1) || { fail "mount -o ro,loop $img: $_out"; return 1; }
  _got=$(cat /mnt/guest/nonce 2>/dev/null)
  umount /mnt/guest
  [ "$_got" = "$nonce" ] || { fail "xvda: /nonce in the image is '$_got', the guest was given '$nonce'"; return 1; }
  _got=$(head -n 1 "$data" | tr -d '\0')
  [ "$_got" = "nonce=$nonce" ] || { fail "xvdb: the image starts with '$_got', want 'nonce=$nonce'"; return 1; }
  put guest_disks ok
  stepres "disks ok: /nonce on xvda's ext4 and xvdb's first block hold $nonce"
  return 0
}

guest_cleanup() {
  cleanup "$name"
  cp /var/log/xen/xen-hotplug.log "$R/logs/" 2>/dev/null
  [ -n "$GUEST_LOOP" ] && /usr/sbin/losetup -d "$GUEST_LOOP" 2>/dev/null
  rm -f "$img" "$data"
}
