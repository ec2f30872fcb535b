# lab-scenarios: xendm-pvh xendm-bigfiles qemu-xen-pvh xendm-multiboot qemu-xen-multiboot xendm-1g xendm-bigmem xendm-vcpuset qemu-xen-vcpuset pvh-floor
# lab-expect-fail: qemu-xen-pvh qemu-xen-multiboot
#
# Scenario group "kernels" of the xendm Xen lab (sourced by dom0's /init;
# docs/lab.md "kernels group", docs/kernels.md). Files from
# kernels.prepare are in /lab/kernels/.
#
#   *-pvh        kernel = the uncompressed vmlinux of the lab's bzImage (a PVH
#                ELF), with the standard initrd: GUEST-RESULT: PASS.
#   xendm-bigfiles the same vmlinux (66 MB) with a 33 MB initrd, memory =
#                256, not recorded: the DM's memory and start-up with big
#                boot files.
#   *-multiboot  kernel = tests/kernels' multiboot.elf, ramdisk = two modules
#                as QEMU's -initrd list ("path args,path"): the kernel prints
#                KERNEL-RESULT: PASS marker=<token> mods=00000002 on COM1.
#   xendm-1g     the standard guest with memory = 1024 and vcpus = 4 (all online).
#   xendm-bigmem memory = 512, maxmem = 5120 (populate-on-demand), mmio_hole =
#                1024: RAM above 4 GiB in the guest's e820, low RAM ends at
#                3 GiB, the balloon reaches its target and follows xl mem-set.
#   *-vcpuset    vcpus = 1, maxvcpus = 2; after PASS, xl vcpu-set 2: the guest
#                onlines cpu1 and xl vcpu-list shows 2 vCPUs.
#   pvh-floor    the same vmlinux and initrd as a type = "pvh" guest: no device
#                model at all (libxl loads the kernel); the floor the HVM
#                boots are compared with (issue 14). Console: hvc0 via xl console.
#
# Expected baseline failures (xen-toolstack.md sections 5 and 6.3): qemu-xen
# 7.2 on xenfv treats a PVH ELF as a pre-2.00 zImage and, given a ramdisk,
# exits ("linux kernel too old to load a ram disk"); its multiboot_dma.bin
# spins on the fw_cfg DMA port, which Xen drops (and an ELF linked at 1 MiB,
# as this one, is written over hvmloader before the vCPU starts). Both get a
# short timeout (K_FAIL_TIMEOUT).

K_DIR=/lab/kernels
K_FAIL_TIMEOUT=${K_FAIL_TIMEOUT:-60}   # bound on an expected baseline failure (s)
K_STEP_TIMEOUT=${K_STEP_TIMEOUT:-180}  # bound on a guest's answer after PASS (s)

# k_cfg NAME DM: the standard boot config of write_cfg (serial to a file,
# on_reboot destroy); k_set changes a key of it afterwards.
k_cfg() {
  write_cfg "$1" "$2" "file:$R/guest-serial.log" destroy
}
# k_set KEY VALUE: replaces (or appends) `KEY = VALUE` in the current config.
# VALUE is written as given (quote strings); it must not contain '|' or '&'.
k_set() {
  _c=/etc/xen/$name.cfg
  if grep -q "^$1 = " "$_c"; then sed -i "s|^$1 = .*|$1 = $2|" "$_c"; else echo "$1 = $2" >>"$_c"; fi
  cp "$_c" "$R/xl.cfg"
}
# k_variant MODE [ARGS]: boot the variant initrd (kernels.guest-init) in
# guest.kmode=MODE, with extra kernel ARGS
k_variant() {
  k_set ramdisk "\"$K_DIR/initrd-kernels.img\""
  k_set cmdline "\"console=ttyS0 panic=-1 quiet guest.hold=900 rdinit=/init-kernels guest.kmode=$1 ${2:+$2 }$GUEST_ARGS\""
}
k_nonce() { read -r _u </proc/sys/kernel/random/uuid; K_NONCE=${_u%%-*}; }
# k_find FILE PREFIX: sets K_LINE to the first line of FILE containing PREFIX
# (from PREFIX on, without CR)
k_find() {
  K_LINE=
  [ -s "$1" ] || return 1
  while IFS= read -r _l; do
    case $_l in
      *"$2"*) K_LINE=$2${_l#*"$2"}; K_LINE=${K_LINE%"$CR"}; return 0 ;;
    esac
  done <"$1"
  return 1
}
# k_wait FILE T0_CS SECS PREFIX: waits for a line with PREFIX, like wait_marker
# (gives up when the DM ($DMPID, if set) or the domain $name is gone). Sets
# K_LINE, K_CS, WAIT_WHY; 0 found, 2 timeout, 3 domain gone, 4 DM exited.
k_wait() {
  _n=0
  while :; do
    if k_find "$1" "$4"; then now; K_CS=$NOW; return 0; fi
    now
    [ $((NOW - $2)) -lt $(($3 * 100)) ] || { WAIT_WHY="no '$4' line within ${3}s"; return 2; }
    if [ -n "$DMPID" ] && ! pid_alive "$DMPID"; then
      k_find "$1" "$4" && continue
      WAIT_WHY="the device model (pid $DMPID) exited before the '$4' line"; return 4
    fi
    _n=$((_n + 1))
    if [ $((_n % 20)) -eq 0 ] && ! xl domid "$name" >/dev/null 2>&1; then
      k_find "$1" "$4" && continue
      WAIT_WHY="domain $name disappeared before the '$4' line"; return 3
    fi
    usleep 500000
  done
}
k_wait_error() { echo "$WAIT_WHY; guest serial tail: $(serial_tail "$R/guest-serial.log"); DM log tail: $(dm_log_tail "$name")$(k_xen_why)"; }
# k_xen_why: what Xen logged about the domain's death (triple fault, crash)
k_xen_why() {
  [ -n "$DOMID" ] || return 0
  _x=$(timeout -s KILL 20 xl dmesg 2>/dev/null | grep -a -E "d${DOMID}v[0-9]+ (Triple fault|.*crash)|MMIO emulation failed.*d${DOMID}v|domain_crash.*d${DOMID}|PoD.*d${DOMID}" | tail -n 3 | tr '\n' '|')
  [ -z "$_x" ] || echo "; xl dmesg: $_x"
}
# k_val LINE KEY: the value of KEY=... in a key=value line
k_val() { echo "$1" | sed -n "s/.* $2=\([^ ]*\).*/\1/p"; }

# k_boot DM SECS: xl create, then GUEST-RESULT: PASS within SECS; samples the
# DM and checks xendm's sandbox. Returns 1 after fail().
k_boot() {
  log "$S: xl create ($1 as device model)"
  if ! create "$name" "$R/xl-create.log"; then
    put create_return_s "$(fmt_s "$CREATE_CS")"; fail "$CREATE_ERR"; return 1
  fi
  put create_return_s "$(fmt_s "$CREATE_CS")"
  wait_marker "$R/guest-serial.log" "$CREATE_T0" "$2" "$name" "$DMPID"; k_st=$?
  pid_alive "$DMPID" && sample_dm "$DMPID"
  [ $k_st -eq 0 ] || { fail "$(marker_error $k_st "$R/guest-serial.log" "$name")"; return 1; }
  record_marker
  if [ "$1" = xendm ]; then check_sandbox 0 || return 1; fi
  return 0
}
# k_no_record DM WHY: with LAB_RECORD=1, run xendm directly instead of through
# the recording wrapper, because xendm-replay cannot replay this trace (WHY);
# the lab would otherwise report REPLAY FAILED for it (docs/lab.md)
k_no_record() {
  [ "$1" = xendm ] && [ "${LAB_RECORD:-0}" = 1 ] || return 0
  k_set device_model_override '"/usr/bin/xendm"'
  stepres "not recorded: $2"
}
# the marker timeout: short for the baseline's expected failures
k_timeout() { if [ "$1" = xendm ]; then echo "$LAB_MARKER_TIMEOUT"; else echo "$K_FAIL_TIMEOUT"; fi; }

# ---------------------------------------------------------------- PVH
scenario_xendm_pvh() { k_pvh "$1"; }
scenario_qemu_xen_pvh() { k_pvh "$1"; }
k_pvh() {
  name=$S
  k_cfg "$name" "$1"
  k_set kernel "\"$K_DIR/vmlinux\""
  stepres "kernel $K_DIR/vmlinux ($(stat -c %s $K_DIR/vmlinux) bytes, PVH ELF), ramdisk /guest/initrd.img"
  k_boot "$1" "$(k_timeout "$1")" || return
  put pass true
}

# Big boot files (issue 14 item 1: the DM's memory must not grow with them):
# the 66 MB vmlinux and a 33 MB initrd (the standard one plus 32 MiB of random
# bytes), memory = 256. Not recorded, so its startup_ms is xendm's own
# start-up without the trace's hashing of the files.
scenario_xendm_bigfiles() {
  name=$S
  k_cfg "$name" "$1"
  k_set memory 256
  k_set kernel "\"$K_DIR/vmlinux\""
  k_set ramdisk "\"$K_DIR/initrd-big.img\""
  k_no_record "$1" "measures start-up without the trace's hashing of 100 MB of boot files"
  stepres "kernel vmlinux ($(stat -c %s $K_DIR/vmlinux) bytes), ramdisk initrd-big.img ($(stat -c %s $K_DIR/initrd-big.img) bytes)"
  k_boot "$1" "$LAB_MARKER_TIMEOUT" || return
  put dm_startup_ms "$(dm_startup_ms "$name")"
  boot_timeline "$name"
  put pass true
}

# ---------------------------------------------------------------- multiboot
scenario_xendm_multiboot() { k_multiboot "$1"; }
scenario_qemu_xen_multiboot() { k_multiboot "$1"; }
k_multiboot() {
  name=$S
  . "$K_DIR/multiboot.env"
  k_nonce; marker=$K_NONCE
  k_cfg "$name" "$1"
  k_set kernel "\"$K_DIR/multiboot.elf\""
  # libxl passes ramdisk= verbatim as -initrd: QEMU's multiboot module list
  k_set ramdisk "\"$K_DIR/mod0.bin mod1 args,$K_DIR/mod1.bin\""
  k_set cmdline "\"xkt.marker=$marker $MB_ARGS\""
  k_no_record "$1" "the module command lines hold the dom0 paths of the modules, and a replay sees its local paths (src/machine/replay.rs)"
  log "$S: xl create ($1 as device model, multiboot kernel, 2 modules)"
  if ! create "$name" "$R/xl-create.log"; then
    put create_return_s "$(fmt_s "$CREATE_CS")"; fail "$CREATE_ERR"; return
  fi
  put create_return_s "$(fmt_s "$CREATE_CS")"
  # the kernel powers off right after its result: sample the DM now (xendm
  # enters its sandbox before it reports "running", which xl create waits for)
  pid_alive "$DMPID" && sample_dm "$DMPID"
  k_wait "$R/guest-serial.log" "$CREATE_T0" "$(k_timeout "$1")" "KERNEL-RESULT:"; k_st=$?
  [ $k_st -eq 0 ] || { fail "$(k_wait_error)"; return; }
  put create_to_marker_s "$(fmt_s $((K_CS - CREATE_T0)))"
  log "$S: $K_LINE"
  want="KERNEL-RESULT: PASS marker=$marker mods=00000002"
  [ "$K_LINE" = "$want" ] || { fail "kernel result '$K_LINE', want '$want'; serial tail: $(serial_tail "$R/guest-serial.log")"; return; }
  for m in "cmdline=$K_DIR/mod0.bin mod1 args" "cmdline=$K_DIR/mod1.bin fnv="; do
    grep -q -F "$m" "$R/guest-serial.log" || { fail "module command line '$m' not in the kernel's output"; return; }
  done
  stepres "KERNEL-RESULT PASS, both module command lines as given"
  if [ "$1" = xendm ]; then check_sandbox 0 || return; fi
  put pass true
}

# ---------------------------------------------------------------- memory
scenario_xendm_1g() { k_mem "$1" 1024 "" "" 4; }
# Populate-on-demand: Debian's kernel zeroes every page it allocates
# (CONFIG_INIT_ON_ALLOC_DEFAULT_ON) and scrubs the pages it balloons out
# (CONFIG_XEN_SCRUB_PAGES_DEFAULT), so ballooning 4.5 GiB out touched each
# page first: Xen populated it, ran out of PoD cache and swept for zero pages;
# the first run took 6 minutes to reach init. init_on_alloc=0
# xen_scrub_pages=0 let the balloon driver give back pages it never touched.
K_POD_ARGS="init_on_alloc=0 xen_scrub_pages=0"
scenario_xendm_bigmem() { k_mem "$1" 512 5120 1024 ""; }
k_mem() { # DM MEMORY MAXMEM MMIO_HOLE VCPUS
  name=$S
  k_cfg "$name" "$1"
  k_set memory "$2"
  [ -z "$5" ] || k_set vcpus "$5"
  [ -z "$3" ] || k_set maxmem "$3"
  [ -z "$4" ] || k_set mmio_hole "$4"
  # loglevel=2: with several vCPUs on the lab's one pCPU the guest kernel may
  # warn (RCU stalls) in the middle of the watcher's report line
  if [ -n "$3" ]; then k_variant mem "$K_POD_ARGS"; else k_variant mem "${5:+loglevel=2}"; fi
  [ "${3:-0}" -le 4096 ] || k_no_record "$1" "maxmem = $3 MiB is more than xendm-replay accepts (-m <= 4096)"
  k_boot "$1" "$LAB_MARKER_TIMEOUT" || return
  now; t=$NOW
  k_wait "$R/guest-serial.log" "$t" "$K_STEP_TIMEOUT" "GUEST-MEM:" || { fail "memory report: $(k_wait_error)"; return; }
  m=$K_LINE; log "$S: $m"
  ram=$(k_val "$m" e820_ram_kib); high=$(k_val "$m" high_ram_kib); lowend=$(k_val "$m" low_ram_end)
  mt=$(k_val "$m" memtotal_kib); cur=$(k_val "$m" balloon_current_kib); tgt=$(k_val "$m" balloon_target_kib)
  for v in e820_ram_kib:$ram high_ram_kib:$high memtotal_kib:$mt balloon_current_kib:$cur balloon_target_kib:$tgt; do
    case ${v#*:} in ''|*[!0-9]*) fail "memory report lacks ${v%%:*}: $m"; return ;; esac
    put "guest_${v%%:*}" "${v#*:}"
  done
  put guest_low_ram_end "$lowend"
  cpus=$(k_val "$m" cpus_online); put guest_cpus_online "$cpus"
  if [ -n "$5" ] && [ "$cpus" != "0-$(($5 - 1))" ]; then
    fail "vcpus = $5 but the guest has CPUs '$cpus' online"; return
  fi
  d=$((cur - tgt)); [ $d -lt 0 ] && d=$((-d))
  [ $d -le 4096 ] || { fail "the balloon did not reach its target: current $cur KiB, target $tgt KiB"; return; }
  [ "$mt" -le "$cur" ] && [ "$cur" -le $((ram + 1024)) ] \
    || { fail "MemTotal $mt KiB, balloon current $cur KiB and e820 RAM $ram KiB are inconsistent"; return; }
  [ $((mt * 2)) -gt "$cur" ] || { fail "MemTotal $mt KiB is less than half the balloon's $cur KiB"; return; }
  if [ -n "$3" ]; then
    [ "$high" -gt 0 ] || { fail "maxmem = $3 but the guest's e820 has no RAM above 4 GiB: $m"; return; }
    # mmio_hole = N MiB: low RAM ends at or below 4 GiB - N MiB
    [ $((lowend)) -le $(((4096 - $4) << 20)) ] || { fail "mmio_hole = $4 not honoured: low RAM ends at $lowend"; return; }
    [ $((ram >> 10)) -ge $(($3 - $4)) ] || { fail "e820 RAM $ram KiB is below maxmem $3 MiB - the hole"; return; }
    stepres "e820 RAM $((ram >> 10)) MiB ($((high >> 10)) MiB above 4 GiB, low RAM ends at $lowend), balloon $((cur >> 10))/$((tgt >> 10)) MiB, MemTotal $((mt >> 10)) MiB"
    # balloon up: xl mem-set to 768 MiB; the guest populates the pages
    now; t=$NOW
    timeout -s KILL 60 xl mem-set "$name" 768m >"$R/xl-mem-set.log" 2>&1 \
      || { fail "xl mem-set failed: $(xl_errors "$R/xl-mem-set.log")"; return; }
    k_wait "$R/guest-serial.log" "$t" "$K_STEP_TIMEOUT" "GUEST-BALLOON:" || { fail "balloon: $(k_wait_error)"; return; }
    log "$S: $K_LINE"
    bc=$(k_val "$K_LINE" current_kib); bt=$(k_val "$K_LINE" target_kib)
    d=$((bc - bt)); [ $d -lt 0 ] && d=$((-d))
    [ $d -le 4096 ] && [ "$bc" -gt "$cur" ] || { fail "balloon did not grow to the new target: $K_LINE"; return; }
    put mem_set_s "$(fmt_s $((K_CS - t)))"
    stepres "xl mem-set 768m: guest balloon $((bc >> 10)) MiB after $(fmt_s $((K_CS - t)))s"
  else
    [ $((ram >> 10)) -ge $(($2 - 16)) ] || { fail "memory = $2 but the e820 has only $ram KiB of RAM"; return; }
    stepres "e820 RAM $((ram >> 10)) MiB, balloon $((cur >> 10))/$((tgt >> 10)) MiB, MemTotal $((mt >> 10)) MiB"
  fi
  grep -a 'GUEST-IOMEM:' "$R/guest-serial.log" | tr -d '\r' >>"$R/steps.txt"
  pid_alive "$DMPID" || { fail "the DM exited after the guest's memory report; DM log tail: $(dm_log_tail "$name")"; return; }
  sample_dm "$DMPID"
  put pass true
}

# ---------------------------------------------------------------- vcpu-set
scenario_xendm_vcpuset() { k_vcpuset "$1"; }
scenario_qemu_xen_vcpuset() { k_vcpuset "$1"; }
k_vcpuset() {
  name=$S
  k_cfg "$name" "$1"
  k_set maxvcpus 2
  k_variant vcpu
  k_no_record "$1" "the hot-add comes from QMP, not from an ioreq, so a trace across it does not replay (docs/vcpus.md)"
  k_boot "$1" "$LAB_MARKER_TIMEOUT" || return
  now; t=$NOW
  # --ignore-host: the lab's Xen has 1 pCPU (LAB_SMP), and xl refuses more vCPUs than that
  timeout -s KILL 60 xl vcpu-set --ignore-host "$name" 2 >"$R/xl-vcpu-set.log" 2>&1 \
    || { fail "xl vcpu-set failed: $(xl_errors "$R/xl-vcpu-set.log"); DM log tail: $(dm_log_tail "$name")"; return; }
  k_wait "$R/guest-serial.log" "$t" "$K_STEP_TIMEOUT" "GUEST-VCPU:" || { fail "vcpu-set: $(k_wait_error)"; return; }
  log "$S: $K_LINE"
  case $K_LINE in "GUEST-VCPU: cpu1 online"*) ;; *) fail "vcpu-set: $K_LINE"; return ;; esac
  put vcpu_set_s "$(fmt_s $((K_CS - t)))"
  timeout -s KILL 30 xl vcpu-list "$name" >"$R/xl-vcpu-list.txt" 2>&1
  n=$(grep -c "^$name " "$R/xl-vcpu-list.txt")
  [ "$n" = 2 ] || { fail "xl vcpu-list shows $n vCPUs, want 2: $(tr '\n' '|' <"$R/xl-vcpu-list.txt")"; return; }
  stepres "xl vcpu-set 2: guest onlined cpu1 $(fmt_s $((K_CS - t)))s later; xl vcpu-list: 2 vCPUs"
  pid_alive "$DMPID" && sample_dm "$DMPID"
  put pass true
}

# ---------------------------------------------------------------- PVH floor
# type = "pvh": libxl builds the domain and loads kernel and ramdisk itself;
# no DM. The guest's console is the PV console (hvc0), read with xl console.
scenario_pvh_floor() {
  name=$S
  cat >"/etc/xen/$name.cfg" <<EOF
name = "$name"
type = "pvh"
memory = $GUEST_MEM
vcpus = 1
kernel = "$K_DIR/vmlinux"
ramdisk = "/guest/initrd.img"
cmdline = "console=hvc0 panic=-1 quiet guest.hold=900 $GUEST_ARGS"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
EOF
  cp "/etc/xen/$name.cfg" "$R/xl.cfg"
  log "$S: xl create (type = pvh, no device model)"
  if ! create "$name" "$R/xl-create.log"; then
    put create_return_s "$(fmt_s "$CREATE_CS")"; fail "$CREATE_ERR"; return
  fi
  put create_return_s "$(fmt_s "$CREATE_CS")"
  [ -p /tmp/console-in ] || mkfifo /tmp/console-in
  xl console -t pv "$name" <>/tmp/console-in >"$R/console-1.log" 2>&1 &
  CONS_PID=$!
  wait_marker "$R/console-1.log" "$CREATE_T0" "$LAB_MARKER_TIMEOUT" "$name" ""; k_st=$?
  [ $k_st -eq 0 ] || { fail "$(marker_error $k_st "$R/console-1.log" "$name")"; return; }
  record_marker
  put pass true
}
