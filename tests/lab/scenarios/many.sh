# Scenario group "many": many guests per host (issue 14 item 4).
# lab-scenarios: xendm-many qemu-xen-many
#
# Starts LAB_MANY guests (xendm: 8 by default; qemu-xen: LAB_MANY_QEMU, 4 by
# default, because on the lab's one emulated pCPU eight qemu-xen guests take
# several minutes, most of it qemu-xen loading the kernel byte by byte) at
# once, each the standard test guest with its own serial file, and waits
# until every one has printed its PASS line. Passes when all did. Records
# the create->PASS of each guest, their spread (slowest - fastest), and the
# device models' memory while all guests run: total and mean VmRSS and
# Private_Dirty (the per-guest cost once the binary's pages are shared).
# Sourced by dom0's /init (tests/lab/dom0-init); uses its helpers. Its
# variables start with mn_: dom0-init's helpers use _-names of their own
# (now() sets _i, wait_gone() _t0).

# many_boot DM COUNT
many_boot() {
  mn_dm=$1; mn_n=$2; mn_i=1
  put guests "$mn_n"
  log "$S: starting $mn_n guests at once ($mn_dm as device model)"
  now; mn_t0=$NOW
  while [ "$mn_i" -le "$mn_n" ]; do
    write_cfg "$S-$mn_i" "$mn_dm" "file:$R/serial-$mn_i.log" destroy
    ( timeout -s KILL "$LAB_CREATE_TIMEOUT" xl create "/etc/xen/$S-$mn_i.cfg" >"$R/xl-create-$mn_i.log" 2>&1
      echo "$?" >"$R/xl-create-$mn_i.rc" ) &
    mn_i=$((mn_i + 1))
  done
  wait
  mn_i=1; mn_bad=
  while [ "$mn_i" -le "$mn_n" ]; do
    [ "$(cat "$R/xl-create-$mn_i.rc" 2>/dev/null)" = 0 ] || mn_bad="$mn_bad $mn_i:$(xl_errors "$R/xl-create-$mn_i.log")"
    mn_i=$((mn_i + 1))
  done
  put create_all_s "$(since "$mn_t0")"
  [ -z "$mn_bad" ] || { fail "xl create failed for guest(s)$mn_bad"; many_destroy "$mn_n"; return; }
  stepres "all $mn_n xl create returned after $(since "$mn_t0")s"
  many_wait "$mn_n" "$mn_t0" || { many_destroy "$mn_n"; return; }
  many_sample "$mn_n"
  many_destroy "$mn_n"
  [ -s "$R/error.txt" ] || put pass true
}

# many_wait COUNT T0_CS: every guest's PASS line, bounded by LAB_MANY_TIMEOUT
many_wait() {
  mn_left=$1; mn_min=; mn_max=; mn_times=
  while [ "$mn_left" -gt 0 ]; do
    mn_i=1; mn_left=0
    while [ "$mn_i" -le "$1" ]; do
      if [ ! -e "$R/pass-$mn_i" ]; then
        if find_marker "$R/serial-$mn_i.log"; then
          case $MARK_LINE in
            "GUEST-RESULT: PASS"*) now; mn_d=$((NOW - $2)); echo "$mn_d" >"$R/pass-$mn_i"
              mn_times="$mn_times $(fmt_s "$mn_d")"
              { [ -z "$mn_min" ] || [ "$mn_d" -lt "$mn_min" ]; } && mn_min=$mn_d
              { [ -z "$mn_max" ] || [ "$mn_d" -gt "$mn_max" ]; } && mn_max=$mn_d ;;
            *) fail "guest $mn_i: $MARK_LINE"; return 1 ;;
          esac
        else
          mn_left=$((mn_left + 1))
        fi
      fi
      mn_i=$((mn_i + 1))
    done
    [ "$mn_left" -eq 0 ] && break
    now
    if [ $((NOW - $2)) -ge $((LAB_MANY_TIMEOUT * 100)) ]; then
      fail "$mn_left of $1 guests printed no GUEST-RESULT within ${LAB_MANY_TIMEOUT}s"; return 1
    fi
    usleep 500000
  done
  put create_to_marker_s "$(fmt_s "$mn_max")"
  put first_marker_s "$(fmt_s "$mn_min")"
  put marker_spread_s "$(fmt_s $((mn_max - mn_min)))"
  stepres "all $1 guests PASS; create->PASS per guest:$mn_times s"
}

# many_sample COUNT: the DMs' memory while every guest runs
many_sample() {
  mn_i=1; mn_rss=0; mn_pd=0; mn_anon=0; mn_seen=0
  while [ "$mn_i" -le "$1" ]; do
    mn_dom=$(domid_of "$S-$mn_i"); mn_pid=
    [ -n "$mn_dom" ] && mn_pid=$(dm_pid_of "$mn_dom")
    if [ -n "$mn_pid" ] && [ -r "/proc/$mn_pid/status" ]; then
      mn_r=$(awk '/^VmRSS:/ {print $2}' "/proc/$mn_pid/status")
      mn_p=$(awk '/^Private_Dirty:/ {print $2}' "/proc/$mn_pid/smaps_rollup" 2>/dev/null)
      mn_a=$(awk '/^Anonymous:/ {print $2}' "/proc/$mn_pid/smaps_rollup" 2>/dev/null)
      mn_anon=$((mn_anon + ${mn_a:-0}))
      mn_rss=$((mn_rss + ${mn_r:-0})); mn_pd=$((mn_pd + ${mn_p:-0})); mn_seen=$((mn_seen + 1))
      echo "guest $mn_i domid $mn_dom DM pid $mn_pid VmRSS ${mn_r:-?} KiB Private_Dirty ${mn_p:-?} KiB Anonymous ${mn_a:-?} KiB" >>"$R/dm-memory.txt"
    fi
    mn_i=$((mn_i + 1))
  done
  [ "$mn_seen" -gt 0 ] || { fail "no device model process found while the guests ran"; return; }
  put dm_total_vmrss_kib "$mn_rss"
  put dm_total_private_dirty_kib "$mn_pd"
  put dm_vmrss_kib $((mn_rss / mn_seen))
  put dm_private_dirty_kib $((mn_pd / mn_seen))
  put dm_total_anon_kib "$mn_anon"
  put dm_anon_kib $((mn_anon / mn_seen))
  stepres "DM memory for $mn_seen guests: VmRSS total $mn_rss KiB (mean $((mn_rss / mn_seen))), Private_Dirty total $mn_pd KiB (mean $((mn_pd / mn_seen))), Anonymous total $mn_anon KiB (mean $((mn_anon / mn_seen)))"
}

# many_destroy COUNT
many_destroy() {
  mn_i=1
  while [ "$mn_i" -le "$1" ]; do
    if xl domid "$S-$mn_i" >/dev/null 2>&1; then
      timeout -s KILL 60 xl destroy "$S-$mn_i" >>"$R/cleanup.log" 2>&1 &
    fi
    mn_i=$((mn_i + 1))
  done
  wait
  mn_i=1
  while [ "$mn_i" -le "$1" ]; do
    wait_gone "$S-$mn_i" 30 || log "$S: guest $S-$mn_i still exists after xl destroy"
    mn_i=$((mn_i + 1))
  done
}

scenario_xendm_many() { many_boot xendm "${LAB_MANY:-8}"; }
scenario_qemu_xen_many() { many_boot qemu-xen "${LAB_MANY_QEMU:-4}"; }
