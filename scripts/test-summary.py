#!/usr/bin/env python3
"""The closing summary of scripts/test.sh.

Two sub-commands:

  stamp LOG STAGE   copies standard input to standard output, line by line,
                    and appends each line to LOG as `SECONDS<TAB>STAGE<TAB>LINE`
                    (SECONDS: a monotonic clock), so the summary can time
                    each test binary (cargo runs them one after another).
  report LOG SKIPS START
                    reads the stamped log of every stage and the skip log
                    that cstor-testkit's `skip()` writes (one line per
                    skipped test: binary, test, need, reason), and prints a
                    table of the test binaries with their counts and times,
                    each skipped test with its reason, each failed test,
                    the total time, and last `tests: P passed, F failed,
                    S skipped`. A test that skipped is never counted as
                    passed. Exits 1 if anything failed (a failed test, a
                    test binary that crashed, a stage that did not build).

Stage results (cargo's exit status) arrive as lines `STAGE-EXIT<TAB>STAGE<TAB>N`
in LOG, written by scripts/test.sh.
"""

import re
import sys
import time

RUNNING = re.compile(r"^\s*Running (\S.*?) \((.+)\)\s*$")
DOCTESTS = re.compile(r"^\s*Doc-tests (\S+)\s*$")
TEST_LINE = re.compile(r"^test (\S+)(?: - should panic)? \.\.\. (ok|FAILED|ignored)\b")
RESULT = re.compile(
    r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored;.*?(?:finished in ([\d.]+)s)?\s*$"
)
NOT_OK = re.compile(r"process didn't exit successfully: `?(\S+)")


def stem_of(path):
    """`build/debug/deps/cluster-0123456789abcdef` -> `cluster`."""
    name = path.rsplit("/", 1)[-1]
    m = re.match(r"^(.*)-[0-9a-f]{16}$", name)
    return m.group(1) if m else name


class Binary:
    def __init__(self, stage, label, stem, path, start):
        self.stage = stage
        self.label = label
        self.stem = stem
        self.path = path
        self.start = start
        self.end = start
        self.tests = {}  # name -> ok / FAILED / ignored
        self.result = None  # (passed, failed, ignored) from libtest
        self.crashed = False


def stamp(log_path, stage):
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for raw in sys.stdin.buffer:
            line = raw.decode("utf-8", errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(f"{time.monotonic():.3f}\t{stage}\t{line.rstrip(chr(10))}\n")
            log.flush()
    return 0


def parse(log_path):
    binaries = []
    stages = {}  # stage -> [first stamp, last stamp, exit status]
    failed_paths = set()
    current = {}
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for entry in log:
            parts = entry.rstrip("\n").split("\t", 2)
            if len(parts) == 3 and parts[0] == "STAGE-EXIT":
                stages.setdefault(parts[1], [None, None, 0])[2] = int(parts[2])
                continue
            if len(parts) != 3:
                continue
            t, stage, line = float(parts[0]), parts[1], parts[2]
            span = stages.setdefault(stage, [t, t, 0])
            span[0] = t if span[0] is None else span[0]
            span[1] = t
            m = RUNNING.match(line)
            d = DOCTESTS.match(line)
            if m or d:
                if stage in current:
                    current[stage].end = t
                if m:
                    b = Binary(stage, f"{stem_of(m.group(2))}: {m.group(1)}", stem_of(m.group(2)), m.group(2), t)
                else:
                    b = Binary(stage, f"doc-tests {d.group(1)}", f"doc:{d.group(1)}", "", t)
                binaries.append(b)
                current[stage] = b
                continue
            b = current.get(stage)
            if b is None:
                continue
            b.end = t
            m = TEST_LINE.match(line)
            if m:
                b.tests[m.group(1)] = m.group(2)
                continue
            m = RESULT.match(line)
            if m:
                b.result = tuple(int(m.group(i)) for i in (1, 2, 3))
                continue
            m = NOT_OK.search(line)
            if m:
                failed_paths.add(m.group(1).rstrip("`"))
    for b in binaries:
        if b.path and any(p.startswith(b.path) or b.path.endswith(p) for p in failed_paths):
            b.crashed = True
    return binaries, stages


def read_skips(path):
    skips = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) == 4:
                    binary, test, need, reason = fields
                    skips.setdefault((binary, test), f"needs {need}: {reason}")
    except FileNotFoundError:
        pass
    return skips


def fmt_secs(s):
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def report(log_path, skips_path, start):
    binaries, stages = parse(log_path)
    skips = read_skips(skips_path)
    total_p = total_f = total_s = total_i = 0
    skipped_list, failed_list, rows = [], [], []
    for b in binaries:
        if b.result is not None or b.tests:
            ok = [n for n, s in b.tests.items() if s == "ok"]
            bad = [n for n, s in b.tests.items() if s == "FAILED"]
            ignored = sum(1 for s in b.tests.values() if s == "ignored")
            passed = b.result[0] if b.result else len(ok)
            failed = b.result[1] if b.result else len(bad)
            if b.result:
                ignored = b.result[2]
            skipped = [n for n in ok if (b.stem, n) in skips]
            if b.crashed and (b.result is None or failed == 0):
                failed += 1
                failed_list.append(f"{b.label}: the test binary did not exit successfully")
            failed_list.extend(f"{b.label}: {n}" for n in bad)
        else:
            # A binary without libtest (harness = false): one test, its exit
            # status the verdict; skip() records its thread as "main".
            passed = 0 if b.crashed else 1
            failed = 1 - passed
            ignored = 0
            skipped = ["main"] if passed and (b.stem, "main") in skips else []
            if b.crashed:
                failed_list.append(f"{b.label}: exited unsuccessfully")
        for n in skipped:
            skipped_list.append(f"{b.stage}: {b.stem} {n} — {skips.get((b.stem, n), '')}")
        passed -= len(skipped)
        total_p += passed
        total_f += failed
        total_s += len(skipped)
        total_i += ignored
        rows.append((b, passed, failed, len(skipped), b.end - b.start))

    print()
    print("== summary")
    print(f"{'test binary':<58} {'passed':>6} {'failed':>6} {'skipped':>7} {'time':>9}")
    for b, p, f, s, secs in rows:
        label = f"[{b.stage}] {b.label}"
        if len(label) > 58:
            label = label[:55] + "..."
        print(f"{label:<58} {p:>6} {f:>6} {s:>7} {secs:>7.1f} s")
    for stage, (first, last, status) in stages.items():
        first_binary = min((b.start for b in binaries if b.stage == stage), default=last)
        build = (first_binary - first) if first is not None and first_binary is not None else 0
        print(f"stage {stage}: {fmt_secs((last or 0) - (first or 0))} (building {fmt_secs(build)}), cargo exit {status}")
        stage_failed = any(r[0].stage == stage and r[2] for r in rows)
        if status != 0 and not stage_failed:
            total_f += 1
            failed_list.append(f"stage {stage}: cargo exited {status} without a failed test (a build error?)")
    if total_i:
        print(f"ignored: {total_i} (no test of this project should be #[ignore]d)")
    if skipped_list:
        print(f"skipped ({len(skipped_list)}):")
        for line in skipped_list:
            print(f"  {line}")
    if failed_list:
        print(f"failed ({len(failed_list)}):")
        for line in failed_list:
            print(f"  {line}")
    print(f"total time: {fmt_secs(time.time() - start)}")
    print(f"tests: {total_p} passed, {total_f} failed, {total_s} skipped")
    return 1 if total_f else 0


def main(argv):
    if len(argv) == 4 and argv[1] == "stamp":
        return stamp(argv[2], argv[3])
    if len(argv) == 5 and argv[1] == "report":
        return report(argv[2], argv[3], float(argv[4]))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
