# lab-scenarios: xendm-stubdom
#
# Scenario group "stubdom" of the xendm Xen lab (sourced by dom0's /init;
# docs/stubdom.md, docs/lab.md "stubdom group"; libxl's protocol is
# xen-toolstack.md section 1). The test guest of the boot scenarios, its
# device model xendm in a Linux stubdomain: device_model_stubdomain_override
# = 1 with the stub kernel and the guest's stub ramdisk that stubdom.prepare
# built (/lab/stubdom/), no device_model_override (libxl starts the dom0
# process serving the stub's consoles from the guest's device model path:
# Debian's qemu, docs/stubdom.md), serial pty. Steps:
#   1. xl create; GUEST-RESULT PASS through `xl console` (the stub's console
#      3); the stub's memory (xl list, and what xendm in the stub logs);
#   2. xl shutdown -w: guest, stub domain, the dom0 console process and the
#      QMP proxy all gone;
#   3. a second xl create, then xl destroy while the guest boots: the same.
# result.env adds stub_domid, stub_mem_mib (the stub's allocation),
# stub_used_kib / stub_total_kib (the stub kernel's MemTotal - MemAvailable,
# the largest xendm logged, and MemTotal), xendm_rss_kib (xendm's VmRSS in the stub),
# create_to_marker_s, shutdown_s, destroy_s.
# Helpers: dom0-init (create, put, fail, stepres, wait_marker, ...); this
# file's variables and functions start with sd_/SD_.

SD_DIR=/lab/stubdom
SD_MEM=${SD_MEM:-112}      # stubdomain_memory (MiB): the smallest that works (96 does not; docs/stubdom.md)

scenario_xendm_stubdom() { sd_scenario; }

# sd_cfg NAME: write_cfg's boot config (qemu-xen's path, serial pty,
# on_reboot destroy) with the stub settings
sd_cfg() {
  write_cfg "$1" qemu-xen pty destroy 0
  cat >>"/etc/xen/$1.cfg" <<EOF
device_model_stubdomain_override = 1
stubdomain_kernel = "$SD_DIR/xendm-stubdom-kernel"
stubdomain_ramdisk = "$SD_DIR/guest-stub-ramdisk"
stubdomain_memory = $SD_MEM
stubdomain_cmdline = "console=hvc0"
EOF
  cp "/etc/xen/$1.cfg" "$R/xl.cfg"
}

# sd_ids NAME: SD_GUEST, SD_STUB (domids), SD_HELPER (the dom0 console
# process's pid), SD_PROXY (vchan-socket-proxy's pid)
sd_ids() {
  SD_GUEST=$(domid_of "$1"); SD_STUB=; SD_HELPER=; SD_PROXY=
  [ -n "$SD_GUEST" ] || return 1
  SD_STUB=$(xenstore-read "/local/domain/$SD_GUEST/image/device-model-domid" 2>/dev/null)
  [ -n "$SD_STUB" ] || return 1
  SD_HELPER=$(dm_pid_of "$SD_STUB")
  SD_PROXY=$(xenstore-read "/local/domain/$SD_STUB/image/qmp-proxy-pid" 2>/dev/null)
  return 0
}

# sd_console NAME FILE: `xl console NAME` once the stub's console 3 has a tty;
# sets CONS_PID. For a guest with a stubdomain libxl resolves only the primary
# console (no -t) to the stub's console 3; `xl console -t serial` looks for
# /local/domain/<guest>/serial/0/tty, which such a guest never has, and waits
# for ever (docs/stubdom.md)
sd_console() {
  now; sd_t0=$NOW; CONS_PID=
  until xenstore-read "/local/domain/$SD_STUB/device/console/3/tty" >/dev/null 2>&1; do
    now; [ $((NOW - sd_t0)) -ge 3000 ] && { CONS_WHY="no console tty in xenstore for stub $SD_STUB after 30s"; return 1; }
    usleep 250000
  done
  [ -p /tmp/console-in ] || mkfifo /tmp/console-in
  xl console "$1" <>/tmp/console-in >"$2" 2>&1 &
  CONS_PID=$!
  usleep 500000
  pid_alive "$CONS_PID" || { CONS_WHY="xl console exited at once: $(head -c 300 "$2" | tr '\n' ' ')"; return 1; }
  return 0
}

# sd_stub_log NAME: the file libxl writes the stub's console 0 (xendm's log) to
sd_stub_log() {
  for sd_f in "/var/log/xen/qemu-dm-$1.log" "/var/log/xen/qemu-dm-$1-dm.log"; do
    grep -q -a 'xendm' "$sd_f" 2>/dev/null && { echo "$sd_f"; return 0; }
  done
  echo "/var/log/xen/qemu-dm-$1.log"
}

# sd_all_gone NAME WHAT SECS: guest, stub, console process and proxy gone
# within SECS of WHAT; fails with what is left
sd_all_gone() {
  wait_gone "$1" "$3" || { fail "$2: domain $1 still exists ${3}s after xl $2"; return 1; }
  wait_gone "$1-dm" 30 || { fail "$2: the stub domain $1-dm still exists after the guest has gone"; return 1; }
  wait_pid_gone "$SD_HELPER" 20 || { fail "$2: the stub's dom0 console process (pid $SD_HELPER) still runs"; return 1; }
  wait_pid_gone "$SD_PROXY" 20 || { fail "$2: vchan-socket-proxy (pid $SD_PROXY) still runs"; return 1; }
  return 0
}

# sd_dump: what xenstore says of the stub's devices and their dom0 backends
# (results: xs-stub.txt), for a failed step
sd_dump() {
  {
    xenstore-ls -fp "/local/domain/$SD_STUB" 2>&1
    xenstore-ls -fp "/local/domain/0/backend/console/$SD_STUB" 2>&1
    xenstore-ls -fp "/local/domain/0/device-model/$SD_STUB" 2>&1
  } >"$R/xs-stub.txt"
}

sd_scenario() {
  name=$S
  [ -r "$SD_DIR/guest-stub-ramdisk" ] || { fail "no $SD_DIR/guest-stub-ramdisk (stubdom.prepare did not run)"; return; }
  sd_cfg "$name"
  log "$S: xl create (xendm in a stubdomain, ${SD_MEM} MiB)"
  if ! create "$name" "$R/xl-create.log"; then
    put create_return_s "$(fmt_s "$CREATE_CS")"; fail "create: $CREATE_ERR; stub log: $(tail -n 5 "$(sd_stub_log "$name")" 2>/dev/null | tr '\n' '|')"; return
  fi
  put create_return_s "$(fmt_s "$CREATE_CS")"
  sd_ids "$name" || { fail "create: no stub domain for $name (image/device-model-domid)"; return; }
  put stub_domid "$SD_STUB"
  stepres "create ok $(fmt_s "$CREATE_CS")s: guest $SD_GUEST, stub $SD_STUB, console process ${SD_HELPER:-?}, proxy ${SD_PROXY:-?}"
  sd_console "$name" "$R/console-1.log" || { fail "console: $CONS_WHY"; return; }
  wait_marker "$R/console-1.log" "$CREATE_T0" "$LAB_MARKER_TIMEOUT" "$name" "$SD_HELPER"; st=$?
  sd_log=$(sd_stub_log "$name")
  put stub_mem_mib "$(xl list "$name-dm" 2>/dev/null | awk 'NR == 2 {print $3}')"
  [ $st -eq 0 ] || sd_dump
  [ $st -eq 0 ] || { fail "console: $(marker_error $st "$R/console-1.log" "$name"); stub log: $(tail -n 5 "$sd_log" | tr '\n' '|')"; return; }
  record_marker; stepres "console ok: GUEST-RESULT PASS through xl console"
  usleep 2000000
  put stub_used_kib "$(sed -n 's/.*stubdomain memory: \([0-9]*\) KiB used.*/\1/p' "$sd_log" | sort -n | tail -n 1)"
  put stub_total_kib "$(sed -n 's/.*used of \([0-9]*\) KiB;.*/\1/p' "$sd_log" | tail -n 1)"
  put xendm_rss_kib "$(sed -n 's/.*xendm VmRSS \([0-9]*\) kB.*/\1/p' "$sd_log" | tail -n 1)"
  # shutdown: PV control/shutdown -> the guest powers off -> libxl destroys the stub
  t=$(now_cs)
  timeout -s KILL 90 xl shutdown -w "$name" >"$R/xl-shutdown.log" 2>&1 || { fail "shutdown: xl shutdown -w failed: $(xl_errors "$R/xl-shutdown.log")"; return; }
  sd_all_gone "$name" shutdown 60 || return
  put shutdown_s "$(fmt_s $(($(now_cs) - t)))"
  stepres "shutdown ok: guest, stub, console process and proxy gone $(fmt_s $(($(now_cs) - t)))s after xl shutdown -w"
  stop_console
  mkdir -p "$R/logs-1"; cp /var/log/xen/*"$name"* "$R/logs-1/" 2>/dev/null
  # destroy: a fresh guest, destroyed while it boots
  if ! create "$name" "$R/xl-create-2.log"; then fail "destroy: second create: $CREATE_ERR"; return; fi
  sd_ids "$name" || { fail "destroy: no stub domain for the second $name"; return; }
  t=$(now_cs)
  timeout -s KILL 60 xl destroy "$name" >"$R/xl-destroy.log" 2>&1 || { fail "destroy: xl destroy failed: $(xl_errors "$R/xl-destroy.log")"; return; }
  sd_all_gone "$name" destroy 30 || return
  put destroy_s "$(fmt_s $(($(now_cs) - t)))"
  stepres "destroy ok: guest, stub, console process and proxy gone $(fmt_s $(($(now_cs) - t)))s after xl destroy"
  put pass true
}
