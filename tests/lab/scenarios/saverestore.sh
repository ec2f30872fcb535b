# lab-scenarios: qemu-xen-saverestore xendm-saverestore
#
# Scenario group "saverestore" of the xendm Xen lab (sourced by dom0's
# /init; docs/lab.md "saverestore group"; the QMP sequence and qemu-xen's
# timings are in xen-toolstack.md sections 2 and 6.1). Per DM, one HVM guest
# (direct kernel boot, serial="pty", vga none, 1 vCPU, GUEST_MEM MiB, one raw
# PV disk at xvde: blkback through the `block` script's loop device; index 4,
# so libxl gives the DM no -drive for it) goes through
#   1. xl create; the guest (saverestore.guest-init) writes a nonce to block 0
#      of its disk, syncs, reads it back and prints a heartbeat every second:
#      GUEST-HB: n=<counter> up=<uptime> disk=ok token=<block 1 of the disk>
#      (each read flushes its buffers and uses O_DIRECT: it reaches blkback);
#      dom0 follows it through `xl console` (stdin a FIFO, as lifecycle does);
#   2. xl save: domain and DM gone; dom0 writes "token=<word>" into block 1
#      of the image while nothing has it open; xl restore: a heartbeat with
#      that token (the guest read its disk after the restore) and disk=ok
#      (its nonce is still there), n above the last one before the save and
#      uptime not below it, no second boot;
#   3. xl save -c (checkpoint): same domid and DM pid, heartbeats go on;
#   4. xl migrate to localhost, live (`-s ""`: xl runs the host argument,
#      "xl migrate-receive", through sh instead of ssh): a new domid, the old
#      DM gone, the count goes on through a new `xl console`;
#   5. xl shutdown -w: domain, DMs, loop device, xl processes and libxl's
#      qemu-save/qemu-resume files of the domids all gone.
# result.env adds save_s, restore_s, checkpoint_s, migrate_s, shutdown_s
# (seconds the xl command took), save_file_bytes (the `xl save` stream),
# checkpoint_file_bytes, dm_blob_bytes (/var/lib/xen/qemu-save.<domid>,
# the DM's own state, which libxl keeps after `xl save -c` until the domain
# is destroyed) and restore_hb_s / migrate_hb_s (from the xl command to the
# first heartbeat that proves the guest runs again).
# Helpers: dom0-init (create, start_console, sample_dm, put, fail, stepres,
# ...). This file's variables and functions start with sr_/SR_ (dom0-init's
# now() uses _i, _f, _up, wait_gone and start_console use _t0).

SR_DIR=/lab/saverestore
SR_XL_TIMEOUT=${SR_XL_TIMEOUT:-240}        # bound on xl save, save -c, restore (s)
SR_MIGRATE_TIMEOUT=${SR_MIGRATE_TIMEOUT:-360}  # bound on xl migrate (s)
SR_HB_TIMEOUT=${SR_HB_TIMEOUT:-120}        # bound from an xl command to the heartbeat after it (s)
SR_DISK=/dev/xvde                          # the guest's name of its PV disk (vdev xvde)

scenario_qemu_xen_saverestore() { sr_scenario "$1"; }
scenario_xendm_saverestore() { sr_scenario "$1"; }

# sr_dom0_setup: the /dev/std* and /dev/fd links the block script needs
# (the guest group's guest_dom0_setup explains why)
sr_dom0_setup() {
  [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
  [ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
  [ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
  [ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
}

# sr_cfg NAME DM IMG NONCE: write_cfg's config (DM override, serial pty,
# on_reboot destroy: a guest that reboots fails) with this group's initrd,
# command line and disk
sr_cfg() {
  write_cfg "$1" "$2" pty destroy 0
  sr_args=; for sr_w in $GUEST_ARGS; do case $sr_w in guest.*) ;; *) sr_args="$sr_args $sr_w" ;; esac; done
  sed -i -e "s|^ramdisk = .*|ramdisk = \"$SR_DIR/initrd-sr.img\"|" \
    -e "s|^cmdline = .*|cmdline = \"console=ttyS0 panic=-1 quiet$sr_args rdinit=/init-sr guest.nonce=$4 guest.srdisk=$SR_DISK\"|" \
    "/etc/xen/$1.cfg"
  echo "disk = [ 'format=raw,vdev=${SR_DISK#/dev/},access=rw,target=$3' ]" >>"/etc/xen/$1.cfg"
  cp "/etc/xen/$1.cfg" "$R/xl.cfg"
}

# ---------------------------------------------------------------- heartbeats
# sr_follow FILE: start reading FILE (an xl console capture) on fd 7 from its
# beginning; the SR_ state below is about FILE only. sr_scan then reads what
# was appended since its last call (builtins only: no fork per poll).
#   SR_N, SR_UP (centiseconds), SR_HBDISK, SR_TOKEN  the last heartbeat
#   SR_MIN_N   the first heartbeat's counter in FILE; SR_HBS how many
#   SR_BAD     the first heartbeat with disk other than ok
#   SR_BOOTED, SR_READY, SR_FAILED, SR_POWEROFF      the guest's other lines
sr_follow() {
  exec 7<&-
  exec 7<"$1"
  SR_FILE=$1; SR_PART=; SR_N=; SR_UP=; SR_HBDISK=; SR_TOKEN=; SR_MIN_N=; SR_HBS=0; SR_BAD=
  SR_BOOTED=; SR_READY=; SR_FAILED=; SR_POWEROFF=
}
sr_unfollow() { exec 7<&-; }
sr_scan() {
  while :; do
    if IFS= read -r sr_l <&7; then sr_l=$SR_PART$sr_l; SR_PART=
    else SR_PART=$SR_PART$sr_l; return 0; fi   # at the end: keep a partial line
    sr_l=${sr_l%"$CR"}
    case $sr_l in
      *GUEST-HB:*) sr_hb "${sr_l#*GUEST-HB: }" ;;
      *GUEST-SR-READY:*) SR_READY=${sr_l#*GUEST-SR-READY: } ;;
      *GUEST-SR-BOOT:*) SR_BOOTED=${sr_l#*GUEST-SR-BOOT: } ;;
      *GUEST-SR-FAIL:*) SR_FAILED=${sr_l#*GUEST-SR-FAIL: } ;;
      *GUEST-POWEROFF*) SR_POWEROFF=${sr_l#*GUEST-POWEROFF} ;;
    esac
  done
}
# sr_hb "n=N up=U disk=D token=T": one heartbeat; a line the kernel's own
# output broke (a field missing or garbled) is skipped
sr_hb() {
  sr_hn=; sr_hu=; sr_hd=; sr_ht=
  for sr_kv in $1; do
    case $sr_kv in
      n=*) sr_hn=${sr_kv#n=} ;;
      up=*) sr_hu=${sr_kv#up=} ;;
      disk=*) sr_hd=${sr_kv#disk=} ;;
      token=*) sr_ht=${sr_kv#token=} ;;
    esac
  done
  case $sr_hn in ''|*[!0-9]*) return ;; esac
  case $sr_hu in *[!0-9.]*|*.*.*) return ;; [0-9]*.[0-9][0-9]) ;; *) return ;; esac
  [ -n "$sr_hd" ] && [ -n "$sr_ht" ] || return
  SR_N=$sr_hn; SR_UP=$((${sr_hu%.*} * 100 + 1${sr_hu#*.} - 100)); SR_HBDISK=$sr_hd; SR_TOKEN=$sr_ht
  SR_HBS=$((SR_HBS + 1))
  [ -n "$SR_MIN_N" ] || SR_MIN_N=$sr_hn
  [ "$sr_hd" = ok ] || [ -n "$SR_BAD" ] || SR_BAD="n=$sr_hn up=$sr_hu disk=$sr_hd token=$sr_ht"
}
# sr_hb_str: the last heartbeat, for messages
sr_hb_str() {
  if [ -n "$SR_N" ]; then echo "n=$SR_N up=$(fmt_s "$SR_UP") disk=$SR_HBDISK token=$SR_TOKEN"; else echo none; fi
}
# sr_wait T0_CS SECS MIN_N [TOKEN]: until the last heartbeat in SR_FILE has
# n > MIN_N (and token TOKEN); gives up when the guest reports a failure,
# the DM ($DMPID) exits or the domain $name disappears. Sets SR_CS (when it
# was seen), SR_WHY. Returns 0 seen, 1 guest failure, 2 timeout, 3 domain
# gone, 4 DM exited.
sr_wait() {
  sr_k=0
  while :; do
    sr_scan
    [ -z "$SR_FAILED" ] || { SR_WHY="the guest failed: $SR_FAILED"; return 1; }
    if [ -n "$SR_N" ] && [ "$SR_N" -gt "$3" ] && { [ -z "$4" ] || [ "$SR_TOKEN" = "$4" ]; }; then
      now; SR_CS=$NOW; return 0
    fi
    now
    if [ $((NOW - $1)) -ge $(($2 * 100)) ]; then
      SR_WHY="no heartbeat with n > $3${4:+ and token=$4} within ${2}s (last: $(sr_hb_str)); console tail: $(serial_tail "$SR_FILE"); DM log tail: $(dm_log_tail "$sr_logname")"
      return 2
    fi
    if [ -n "$DMPID" ] && ! pid_alive "$DMPID"; then
      SR_WHY="the device model (pid $DMPID) exited (last heartbeat: $(sr_hb_str)); DM log tail: $(dm_log_tail "$sr_logname")"
      return 4
    fi
    sr_k=$((sr_k + 1))
    if [ $((sr_k % 20)) -eq 0 ] && ! xl domid "$name" >/dev/null 2>&1; then
      SR_WHY="domain $name disappeared (last heartbeat: $(sr_hb_str)); xl monitor log: $(tail -n 4 "/var/log/xen/xl-$name.log" 2>/dev/null | tr '\n' '|')"
      return 3
    fi
    usleep 500000
  done
}
# sr_running WHAT MIN_N [TOKEN]: a heartbeat with n > MIN_N (and TOKEN)
# within SR_HB_TIMEOUT of sr_t, then one more: the guest runs. Returns 1
# after fail().
sr_running() {
  sr_wait "$sr_t" "$SR_HB_TIMEOUT" "$2" "$3" || { fail "$1: $SR_WHY"; return 1; }
  sr_first_cs=$SR_CS
  sr_wait "$SR_CS" 30 "$SR_N" || { fail "$1: the heartbeat stopped after $(sr_hb_str): $SR_WHY"; return 1; }
  [ -z "$SR_BAD" ] || { fail "$1: the guest read back something else than its nonce: $SR_BAD"; return 1; }
  return 0
}

# sr_loop_gone FILE SECS: until no loop device is backed by FILE
sr_loop_gone() {
  now; sr_l0=$NOW
  while /usr/sbin/losetup -a 2>/dev/null | grep -q "($1)"; do
    now; [ $((NOW - sr_l0)) -ge $(($2 * 100)) ] && return 1
    usleep 250000
  done
  return 0
}
# sr_xl WHAT SECS LOG CMD...: a bounded xl command; SR_XL_CS = how long it
# took; returns 1 after fail() with libxl's errors and the DM log tail
sr_xl() {
  sr_what=$1; sr_lim=$2; sr_log=$3; shift 3
  now; sr_t=$NOW
  timeout -s KILL "$sr_lim" "$@" >"$sr_log" 2>&1; sr_rc=$?
  now; SR_XL_CS=$((NOW - sr_t))
  [ $sr_rc -eq 0 ] && return 0
  sr_why="exit $sr_rc"; [ $sr_rc -eq 137 ] && sr_why="killed after ${sr_lim}s"
  fail "$sr_what: '$*' failed ($sr_why) after $(fmt_s "$SR_XL_CS")s: $(xl_errors "$sr_log"); DM log tail: $(dm_log_tail "$sr_logname")"
  return 1
}

# ---------------------------------------------------------------- scenario
sr_scenario() { # DM
  name=$S; sr_logname=$S; sr_img=/tmp/$S-disk.img; sr_save=/tmp/$S.save; sr_ck=/tmp/$S-checkpoint.save
  sr_doms=; sr_dms=
  sr_dom0_setup
  [ -r "$SR_DIR/initrd-sr.img" ] || { fail "no $SR_DIR/initrd-sr.img (saverestore.prepare)"; return; }
  rm -f "$sr_img" "$sr_save" "$sr_ck"; truncate -s 1M "$sr_img"
  read -r sr_u </proc/sys/kernel/random/uuid; sr_nonce=${sr_u%%-*}
  read -r sr_u </proc/sys/kernel/random/uuid; sr_token=${sr_u%%-*}
  sr_cfg "$name" "$1" "$sr_img" "$sr_nonce"
  # LAB_RECORD=1 (CI): a trace of a DM started with -incoming begins from
  # the blob's device state, which xendm-replay (a fresh machine) does not
  # have; run /usr/bin/xendm itself, as kernels.sh's k_no_record does
  if [ "$1" = xendm ] && [ "${LAB_RECORD:-0}" = 1 ]; then
    sed -i 's|^device_model_override = .*|device_model_override = "/usr/bin/xendm"|' "/etc/xen/$name.cfg"
    cp "/etc/xen/$name.cfg" "$R/xl.cfg"
    stepres "not recorded: the restored device models start from the saved device state, which a replay does not have"
  fi
  sr_run "$1"
  sr_cleanup
}

sr_run() { # DM
  # 1. create and boot
  log "$S: xl create ($1 as device model; serial pty; xvde on $sr_img)"
  if ! create "$name" "$R/xl-create.log"; then
    put create_return_s "$(fmt_s "$CREATE_CS")"; fail "create: $CREATE_ERR"; return
  fi
  put create_return_s "$(fmt_s "$CREATE_CS")"
  sr_doms=$DOMID; sr_dms=$DMPID; sr_dom=$DOMID
  stepres "create ok $(fmt_s "$CREATE_CS")s: domid $DOMID, DM pid $DMPID, xvde on $(xenstore-read "/local/domain/0/backend/vbd/$DOMID/51776/physical-device-path" 2>/dev/null || echo '?')"
  start_console "$name" "$DOMID" "$R/console-1.log" || { fail "console: $CONS_WHY; DM log tail: $(dm_log_tail "$sr_logname")"; return; }
  sr_follow "$R/console-1.log"
  sr_t=$CREATE_T0
  sr_wait "$CREATE_T0" "$LAB_MARKER_TIMEOUT" 0 || { fail "boot: $SR_WHY"; return; }
  put create_to_marker_s "$(fmt_s $((SR_CS - CREATE_T0)))"
  case $SR_READY in "nonce=$sr_nonce "*) ;; *) fail "boot: heartbeats without GUEST-SR-READY for nonce $sr_nonce (got '$SR_READY')"; return ;; esac
  put guest_uptime_s "$(echo "$SR_READY" | sed -n 's/.*uptime=\([0-9.]*\).*/\1/p')"
  pid_alive "$DMPID" && sample_dm "$DMPID"
  if [ "$1" = xendm ]; then check_sandbox 0 || return; fi
  now; sr_t=$NOW
  sr_running boot 0 none || return
  stepres "boot ok: first heartbeat $(fmt_s $((sr_first_cs - CREATE_T0)))s after xl create (GUEST-SR-READY: $SR_READY); now $(sr_hb_str)"

  # 2. save, token into the image, restore
  sr_xl save "$SR_XL_TIMEOUT" "$R/xl-save.log" xl -vvv save "$name" "$sr_save" || return
  put save_s "$(fmt_s "$SR_XL_CS")"
  sr_bytes=$(stat -c %s "$sr_save" 2>/dev/null); put save_file_bytes "$sr_bytes"
  wait_gone "$name" 30 || { fail "save: domain $name still exists 30s after xl save returned"; return; }
  wait_pid_gone "$DMPID" 20 || { fail "save: DM pid $DMPID still running 20s after xl save returned"; return; }
  stop_console
  sr_scan; sr_n1=$SR_N; sr_up1=$SR_UP
  [ -n "$sr_n1" ] || { fail "save: no heartbeat on the console before the save"; return; }
  [ -z "$SR_BAD" ] || { fail "save: the guest read back something else than its nonce: $SR_BAD"; return; }
  stepres "save ok: xl save $(fmt_s "$SR_XL_CS")s, $sr_bytes bytes; domain and DM gone; last heartbeat before it $(sr_hb_str)"
  sr_loop_gone "$sr_img" 30 || { fail "save: the block script left $sr_img on a loop device: $(/usr/sbin/losetup -a | tr '\n' ' ')"; return; }
  printf 'token=%s\n' "$sr_token" | dd of="$sr_img" bs=512 seek=1 count=1 conv=sync,notrunc 2>/dev/null \
    || { fail "save: cannot write the token into $sr_img"; return; }
  sr_unfollow   # xl restore leaves a monitor process behind: not with fd 7
  sr_xl restore "$SR_XL_TIMEOUT" "$R/xl-restore.log" xl -vvv restore "$sr_save" || return
  put restore_s "$(fmt_s "$SR_XL_CS")"; sr_rt=$sr_t
  rm -f "$sr_save"
  DOMID=$(domid_of "$name"); DMPID=; [ -n "$DOMID" ] && DMPID=$(dm_pid_of "$DOMID")
  [ -n "$DOMID" ] && [ -n "$DMPID" ] || { fail "restore: xl restore returned but domain $name (domid '${DOMID}') or its DM pid ('${DMPID}') is missing"; return; }
  sr_doms="$sr_doms $DOMID"; sr_dms="$sr_dms $DMPID"
  grep -a -q -e '-incoming' "$R/xl-restore.log" || log "$S: note: no -incoming in the DM argv of xl-restore.log"
  start_console "$name" "$DOMID" "$R/console-2.log" || { fail "restore: $CONS_WHY; DM log tail: $(dm_log_tail "$sr_logname")"; return; }
  sr_follow "$R/console-2.log"
  sr_t=$sr_rt
  sr_running restore "$sr_n1" "$sr_token" || return
  put restore_hb_s "$(fmt_s $((sr_first_cs - sr_rt)))"
  [ -z "$SR_BOOTED" ] || { fail "restore: the guest booted again (GUEST-SR-BOOT: $SR_BOOTED)"; return; }
  [ "$SR_MIN_N" -gt "$sr_n1" ] || { fail "restore: the counter started over: first heartbeat n=$SR_MIN_N after the restore, n=$sr_n1 before the save"; return; }
  [ "$SR_UP" -ge "$sr_up1" ] || { fail "restore: uptime went back: $(fmt_s "$SR_UP")s after the restore, $(fmt_s "$sr_up1")s before the save"; return; }
  stepres "restore ok: xl restore $(fmt_s "$SR_XL_CS")s, domid $sr_dom -> $DOMID (DM pid $DMPID); heartbeat with the token $(fmt_s $((sr_first_cs - sr_rt)))s after xl restore; $(sr_hb_str) (n=$sr_n1 up=$(fmt_s "$sr_up1") before the save)"
  sr_dom=$DOMID
  sr_dm_status restore "$1" || return

  # 3. checkpoint: the domain keeps running
  sr_xl checkpoint "$SR_XL_TIMEOUT" "$R/xl-checkpoint.log" xl -vvv save -c "$name" "$sr_ck" || return
  put checkpoint_s "$(fmt_s "$SR_XL_CS")"
  put checkpoint_file_bytes "$(stat -c %s "$sr_ck" 2>/dev/null)"
  rm -f "$sr_ck"
  sr_blob=$(stat -c %s "/var/lib/xen/qemu-save.$DOMID" 2>/dev/null)
  put dm_blob_bytes "$sr_blob"
  [ -n "$sr_blob" ] || log "$S: note: no /var/lib/xen/qemu-save.$DOMID after xl save -c ($(ls /var/lib/xen | tr '\n' ' '))"
  sr_newdom=$(domid_of "$name")
  [ "$sr_newdom" = "$DOMID" ] || { fail "checkpoint: domid of $name is '$sr_newdom' after xl save -c, was $DOMID"; return; }
  [ "$(dm_pid_of "$DOMID")" = "$DMPID" ] && pid_alive "$DMPID" \
    || { fail "checkpoint: the DM (pid $DMPID) is gone or replaced after xl save -c; DM log tail: $(dm_log_tail "$sr_logname")"; return; }
  sr_scan; sr_n2=$SR_N
  sr_running checkpoint "$sr_n2" "$sr_token" || return
  stepres "checkpoint ok: xl save -c $(fmt_s "$SR_XL_CS")s, DM blob ${sr_blob:-?} bytes; same domid $DOMID and DM pid; heartbeat goes on: $(sr_hb_str) (n=$sr_n2 when xl save -c returned)"

  # 4. live migration to localhost
  sr_unfollow   # xl migrate-receive leaves a monitor process behind
  sr_xl migrate "$SR_MIGRATE_TIMEOUT" "$R/xl-migrate.log" xl -vvv migrate -s "" "$name" "xl -vvv migrate-receive" || return
  put migrate_s "$(fmt_s "$SR_XL_CS")"; sr_mt=$sr_t
  sr_newdom=$(domid_of "$name"); sr_newdm=; [ -n "$sr_newdom" ] && sr_newdm=$(dm_pid_of "$sr_newdom")
  [ -n "$sr_newdom" ] && [ "$sr_newdom" != "$DOMID" ] && [ -n "$sr_newdm" ] \
    || { fail "migrate: after xl migrate, $name has domid '$sr_newdom' (was $DOMID) and DM pid '$sr_newdm'; xl list: $(timeout -s KILL 30 xl list 2>&1 | tr '\n' '|')"; return; }
  wait_pid_gone "$DMPID" 20 || { fail "migrate: the source's DM (pid $DMPID) still runs 20s after xl migrate returned"; return; }
  stop_console
  sr_follow "$R/console-2.log"; sr_scan; sr_n3=$SR_N; sr_up3=$SR_UP
  [ -z "$SR_BAD" ] || { fail "migrate: before the migration the guest read back something else than its nonce: $SR_BAD"; return; }
  DOMID=$sr_newdom; DMPID=$sr_newdm
  sr_logname=$name--incoming   # libxl named the new DM's log when it spawned it
  sr_doms="$sr_doms $DOMID"; sr_dms="$sr_dms $DMPID"
  start_console "$name" "$DOMID" "$R/console-3.log" || { fail "migrate: $CONS_WHY; DM log tail: $(dm_log_tail "$sr_logname")"; return; }
  sr_follow "$R/console-3.log"
  sr_t=$sr_mt
  sr_running migrate "$sr_n3" "$sr_token" || return
  put migrate_hb_s "$(fmt_s $((sr_first_cs - sr_mt)))"
  [ -z "$SR_BOOTED" ] || { fail "migrate: the guest booted again (GUEST-SR-BOOT: $SR_BOOTED)"; return; }
  [ "$SR_MIN_N" -gt "$sr_n3" ] || { fail "migrate: the counter started over: first heartbeat n=$SR_MIN_N on the new domain, n=$sr_n3 on the old one"; return; }
  [ "$SR_UP" -ge "$sr_up3" ] || { fail "migrate: uptime went back: $(fmt_s "$SR_UP")s on the new domain, $(fmt_s "$sr_up3")s on the old one"; return; }
  stepres "migrate ok: xl migrate $(fmt_s "$SR_XL_CS")s, domid $sr_dom -> $DOMID (DM pid $DMPID), old DM gone; $(sr_hb_str) (n=$sr_n3 up=$(fmt_s "$sr_up3") last seen on the old domain)"
  sr_dom=$DOMID
  sr_dm_status migrate "$1" || return

  # 5. shutdown: nothing left
  sr_xl shutdown 60 "$R/xl-shutdown.log" xl shutdown -w "$name" || return
  wait_gone "$name" 60 || { fail "shutdown: domain $name still exists 60s after xl shutdown -w"; return; }
  wait_pid_gone "$DMPID" 20 || { fail "shutdown: DM pid $DMPID still running after the domain has gone"; return; }
  put shutdown_s "$(fmt_s $(($(now_cs) - sr_t)))"
  usleep 500000; sr_scan
  [ -n "$SR_POWEROFF" ] || log "$S: note: no GUEST-POWEROFF line on the console"
  stop_console; sr_unfollow
  sr_leftovers || return
  stepres "shutdown ok: domain and DM gone $(fmt_s $(($(now_cs) - sr_t)))s after xl shutdown -w (guest: GUEST-POWEROFF${SR_POWEROFF:- not seen}); no leftovers (DM pids $sr_dms, domids $sr_doms)"
  put pass true
}

# sr_dm_status PHASE DM: the new DM's /proc status as dm-status-PHASE.txt;
# xendm must be in its sandbox there too (check_sandbox reads dm-status.txt,
# which then holds this sample; result.env keeps the boot's figures)
sr_dm_status() {
  cp "/proc/$DMPID/status" "$R/dm-status-$1.txt" 2>/dev/null \
    || { fail "$1: the DM (pid $DMPID) has no /proc status; DM log tail: $(dm_log_tail "$sr_logname")"; return 1; }
  [ "$2" = xendm ] || return 0
  cp "$R/dm-status-$1.txt" "$R/dm-status.txt"
  check_sandbox 0
}

# sr_leftovers: after the shutdown, nothing of the domain may remain: no
# domain with its name (nor --incoming/--migratedaway), none of its DMs,
# no xl process for it, no loop device on its image, no libxl save/resume
# file of its domids. Returns 1 after fail().
sr_leftovers() {
  timeout -s KILL 30 xl list >"$R/xl-list-end.txt" 2>&1
  grep -q -F -- "$name" "$R/xl-list-end.txt" && { fail "leftovers: xl list still shows $(grep -F -- "$name" "$R/xl-list-end.txt" | tr '\n' '|')"; return 1; }
  for sr_p in $sr_dms; do
    pid_alive "$sr_p" && { fail "leftovers: DM pid $sr_p still runs"; return 1; }
  done
  # the xl monitors (of xl restore and xl migrate-receive) exit once the
  # domain is destroyed
  now; sr_l0=$NOW
  while ps >"$R/ps-end.txt" 2>&1 && grep -E "xl .*($name|migrate-receive)" "$R/ps-end.txt" | grep -q -v grep; do
    now; [ $((NOW - sr_l0)) -ge 2000 ] && { fail "leftovers: xl processes 20s after the shutdown: $(grep -E "xl .*($name|migrate-receive)" "$R/ps-end.txt" | tr '\n' '|')"; return 1; }
    usleep 500000
  done
  sr_loop_gone "$sr_img" 30 || { fail "leftovers: $sr_img still on a loop device: $(/usr/sbin/losetup -a | tr '\n' ' ')"; return 1; }
  for sr_x in $sr_doms; do
    for sr_f in /var/lib/xen/qemu-save.$sr_x /var/lib/xen/qemu-resume.$sr_x; do
      [ -e "$sr_f" ] && { fail "leftovers: $sr_f still exists"; return 1; }
    done
  done
  return 0
}

sr_cleanup() {
  stop_console; sr_unfollow
  for sr_x in "$name--incoming" "$name--migratedaway"; do
    xl domid "$sr_x" >/dev/null 2>&1 && timeout -s KILL 60 xl destroy "$sr_x" >>"$R/cleanup.log" 2>&1
  done
  cleanup "$name"
  ls -l /var/lib/xen >"$R/var-lib-xen.txt" 2>&1
  rm -f "$sr_img" "$sr_save" "$sr_ck"
}
