#!/usr/bin/env bash
# Runs every Go fuzz target of the module for FUZZTIME each (default 20s)
# and checks that each ran at least MIN_EXECS inputs (default 1000): a
# target that spends its time minimising (go's default allows 60 s per
# interesting input) would otherwise run a handful of inputs and look clean.
# The table of targets, inputs run and new corpus entries goes to
# bench/results/fuzz.md. PKGS limits the packages (default ./...).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-20s}
MIN_EXECS=${MIN_EXECS:-1000}
out=bench/results/fuzz.md
tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.log"' EXIT
{
	echo "# make fuzz"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), fuzztime $FUZZTIME each, minimisation ≤ 1 s per input"
	echo
	echo "| package | target | inputs run | new interesting | verdict |"
	echo "|---|---|---|---|---|"
} >"$tmp"
fail=0
for pkg in $(go list ${PKGS:-./...}); do
	if ! list=$(go test -list '^Fuzz' "$pkg" 2>&1); then
		echo "$list" >&2
		echo "| ${pkg#github.com/npsfuse/npsfuse/} | (does not build) | | | **failed** |" >>"$tmp"
		fail=1
		continue
	fi
	for target in $(grep '^Fuzz' <<<"$list" || true); do
		echo "== $pkg $target" >&2
		note=""
		if ! go test "$pkg" -run XXX -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 1s >"$tmp.log" 2>&1; then
			# Go's fuzzer can report "context deadline exceeded" when fuzztime
			# ends while it minimises a new corpus entry: not a finding (no
			# failing input is written). Anything else is.
			if grep -q 'context deadline exceeded' "$tmp.log" && ! grep -q 'Failing input written' "$tmp.log"; then
				note=" (fuzztime ended while minimising)"
			else
				cat "$tmp.log" >&2
				echo "| ${pkg#github.com/npsfuse/npsfuse/} | $target | | | **failed** |" >>"$tmp"
				fail=1
				continue
			fi
		fi
		line=$(grep 'fuzz: elapsed' "$tmp.log" | tail -1)
		execs=$(sed -n 's/.*execs: \([0-9]*\).*/\1/p' <<<"$line")
		newi=$(sed -n 's/.*new interesting: \([0-9]*\).*/\1/p' <<<"$line")
		verdict="ok$note"
		if [ "${execs:-0}" -lt "$MIN_EXECS" ]; then
			verdict="**fewer than $MIN_EXECS inputs**"
			fail=1
		fi
		echo "| ${pkg#github.com/npsfuse/npsfuse/} | $target | ${execs:-?} | ${newi:-?} | $verdict |" >>"$tmp"
		echo "   $execs inputs" >&2
	done
done
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
cat "$out"
exit $fail
