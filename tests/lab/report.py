#!/usr/bin/env python3
"""Turns the lab's per-scenario results into target/lab/report.json and a table.

Input: <out>/results/<scenario>/result.env (key=value lines written by dom0's
/init), error.txt and steps.txt. A requested scenario without results (dom0
died, outer QEMU timed out) is reported as failed with the boot error.
Exit status: 0 if every requested scenario passed, ignoring the scenarios
listed in --expect-fail (their failure is still printed, prominently).
"""
import argparse
import json
import os
import sys

NUMERIC = ("create_to_marker_s", "create_return_s", "guest_uptime_s",
           "reboot_to_marker_s", "shutdown_s", "destroy_s")
INTEGER = ("dm_vmrss_kib", "dm_vmhwm_kib", "dm_threads", "dm_seccomp", "dm_nonewprivs", "dm_uid",
           "dm_startup_ms", "dm_private_dirty_kib", "dm_anon_kib")
TEXT = ("vkbd_state", "guest_devices", "guest_ping6", "guest_disks")
COLUMNS = [("scenario", "scenario"), ("pass", "result"), ("create_return_s", "create->return s"),
           ("create_to_marker_s", "create->PASS s"), ("floor_ratio", "x PVH floor"),
           ("guest_uptime_s", "guest uptime s"),
           ("dm_vmrss_kib", "DM VmRSS KiB"), ("dm_vmhwm_kib", "DM VmHWM KiB"), ("dm_private_dirty_kib", "DM Private_Dirty KiB"), ("dm_anon_kib", "DM anon KiB"),
           ("dm_threads", "DM threads"), ("dm_startup_ms", "DM start-up ms"), ("dm_seccomp", "Seccomp"), ("dm_uid", "DM uid"),
           ("vkbd_state", "vkbd")]
# Tables of a scenario group's own figures, printed below the main one with a
# row for each scenario that has at least one of them (side by side per DM).
EXTRA_TABLES = [
    ("save/restore (saverestore group; seconds the xl command took)",
     [("scenario", "scenario"), ("pass", "result"), ("save_s", "xl save s"),
      ("save_file_bytes", "save file bytes"), ("restore_s", "xl restore s"),
      ("restore_hb_s", "restore->heartbeat s"), ("checkpoint_s", "xl save -c s"),
      ("dm_blob_bytes", "DM blob bytes"), ("migrate_s", "xl migrate s"),
      ("migrate_hb_s", "migrate->heartbeat s")]),
    ("stubdomain (stubdom group; the stub's memory as its kernel counts it)",
     [("scenario", "scenario"), ("pass", "result"), ("stub_mem_mib", "stubdomain_memory MiB"),
      ("stub_total_kib", "stub MemTotal KiB"), ("stub_used_kib", "stub used KiB (max)"),
      ("xendm_rss_kib", "xendm VmRSS KiB"), ("create_to_marker_s", "create->PASS s"),
      ("shutdown_s", "xl shutdown s"), ("destroy_s", "xl destroy s")]),
]


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def number_or_text(val):
    for conv in (int, float):
        try:
            return conv(val)
        except ValueError:
            pass
    return val


def load(out, scenario, boot_error):
    rec = {"scenario": scenario, "pass": False}
    for k in NUMERIC + INTEGER + TEXT:
        rec[k] = None
    rec["error"] = None
    d = os.path.join(out, "results", scenario)
    env = read_text(os.path.join(d, "result.env"))
    if env is None:
        rec["error"] = "no result from dom0" + (f" ({boot_error})" if boot_error else "") \
            + "; see target/lab/console.log"
        return rec
    for line in env.splitlines():
        key, sep, val = line.partition("=")
        if not sep:
            continue
        if key == "pass":
            rec["pass"] = val == "true"
        elif key in NUMERIC:
            try:
                rec[key] = float(val)
            except ValueError:
                pass
        elif key in TEXT:
            rec[key] = val
        elif key in INTEGER:
            try:
                rec[key] = int(val)
            except ValueError:
                pass
        elif key != "scenario":
            # a scenario group's own figures: numbers where they parse
            rec[key] = number_or_text(val)
    rec["error"] = read_text(os.path.join(d, "error.txt")) or None
    steps = read_text(os.path.join(d, "steps.txt"))
    if steps:
        rec["steps"] = steps.splitlines()
    if not rec["pass"] and not rec["error"]:
        rec["error"] = "scenario did not finish" + (f" ({boot_error})" if boot_error else "")
    return rec


FLOOR = "pvh-floor"


def add_floor_ratio(recs):
    """Each passing scenario's create->PASS over the PVH floor's (the same
    kernel as a type = "pvh" guest, no device model), when it ran and passed."""
    floor = next((r for r in recs if r["scenario"] == FLOOR and r["pass"]), None)
    base = floor.get("create_to_marker_s") if floor else None
    for r in recs:
        t = r.get("create_to_marker_s")
        one_guest = r.get("guests") is None  # the many group's figure is its slowest guest of several
        r["floor_ratio"] = round(t / base, 2) if base and t and r["pass"] and one_guest else None


def tail(path, n):
    text = read_text(path)
    if not text:
        return []
    return text.splitlines()[-n:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--expect-fail", default="")
    ap.add_argument("--boot-error", default="")
    ap.add_argument("--boot-secs", default="0")
    ap.add_argument("scenarios", nargs="+")
    a = ap.parse_args()
    expect_fail = {s for s in a.expect_fail.split(",") if s}
    recs = [load(a.out, s, a.boot_error) for s in a.scenarios]
    for r in recs:
        r["expected_fail"] = r["scenario"] in expect_fail
    add_floor_ratio(recs)
    with open(os.path.join(a.out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(recs, f, indent=2)
        f.write("\n")

    def cell(r, k):
        v = r.get(k)
        if k == "pass":
            if v:
                return "PASS" + (" (XPASS)" if r["expected_fail"] else "")
            return "FAIL (expected)" if r["expected_fail"] else "FAIL"
        return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    def table(columns, rs):
        rows = [[h for _, h in columns]] + [[cell(r, k) for k, _ in columns] for r in rs]
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
        for i, row in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))

    print()
    print(f"Xen lab report (outer QEMU {a.boot_secs} s) -> {os.path.join(a.out, 'report.json')}")
    table(COLUMNS, recs)
    for title, columns in EXTRA_TABLES:
        # a group's own figures, not the ones every scenario has
        own = [k for k, _ in columns if k not in ("scenario", "pass") and k not in NUMERIC]
        rs = [r for r in recs if any(r.get(k) is not None for k in own)]
        if rs:
            print(f"\n{title}")
            table(columns, rs)
    for r in recs:
        for s in r.get("steps", []):
            print(f"  {r['scenario']}: {s}")
        tl = [(k[3:-3], v) for k, v in r.items() if k.startswith("tl_") and k.endswith("_ms")]
        if tl:
            print(f"  {r['scenario']}: boot timeline (ms since xendm started): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(tl, key=lambda kv: kv[1])))
    bad = 0
    for r in recs:
        if r["pass"]:
            if r["expected_fail"]:
                print(f"\nNOTE: {r['scenario']} PASSED although LAB_EXPECT_FAIL lists it: "
                      "remove it from LAB_EXPECT_FAIL (tests/run-all).")
            continue
        tag = "EXPECTED FAILURE (LAB_EXPECT_FAIL, not counted)" if r["expected_fail"] else "FAILED"
        print(f"\n*** {r['scenario']}: {tag}\n    {r['error']}")
        d = os.path.join(a.out, "results", r["scenario"])
        for xl_log in ("xl-create.log", "xl-save.log", "xl-restore.log", "xl-checkpoint.log",
                       "xl-migrate.log"):
            xl_lines = [ln for ln in tail(os.path.join(d, xl_log), 100000)
                        if "libxl: error" in ln or "libxl: warning" in ln]
            if xl_lines:
                print("    --- libxl errors in results/%s/%s" % (r["scenario"], xl_log))
                for line in xl_lines[:8]:
                    print(f"    | {line.rstrip()}"[:300])
        for name, n in (("guest-serial.log", 8), ("console-1.log", 8), ("console-2.log", 8),
                        ("console-3.log", 8)):
            lines = tail(os.path.join(d, name), n)
            if lines:
                print(f"    --- last {len(lines)} lines of results/{r['scenario']}/{name}")
                for line in lines:
                    print(f"    | {line.rstrip()}"[:300])
        logs = os.path.join(d, "logs")
        if os.path.isdir(logs):
            for name in sorted(os.listdir(logs)):
                if name.startswith("dm-argv-"):
                    continue  # argv/env/fds: in the results, not useful as a tail
                lines = tail(os.path.join(logs, name), 6)
                if lines:
                    print(f"    --- last {len(lines)} lines of /var/log/xen/{name}")
                    for line in lines:
                        print(f"    | {line.rstrip()}"[:300])
        if not r["expected_fail"]:
            bad += 1
    if bad:
        lines = tail(os.path.join(a.out, "results", "xl-dmesg.txt"), 15)
        if lines:
            print("\n    --- last lines of xl dmesg")
            for line in lines:
                print(f"    | {line.rstrip()}"[:300])
    counted = [r for r in recs if not r["expected_fail"]]
    if len(recs) > len(counted):
        print(f"\nlab: {len(recs) - len(counted)} scenario(s) in LAB_EXPECT_FAIL not counted below")
    print(f"lab: {sum(r['pass'] for r in counted)} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
