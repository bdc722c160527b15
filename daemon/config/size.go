package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

var sizeRE = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$`)

var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
	"ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
	"ti": 1 << 40, "tib": 1 << 40,
}

// ParseSize reads a byte count such as "512MiB", "8GB", "1.5GiB" or
// "1048576" (decimal units are powers of 1000, binary ones of 1024). A
// percentage such as "50%" is that share of total, the machine's RAM for
// memory_budget. The result is positive and at most 2^62.
func ParseSize(s string, total int64) (int64, error) {
	t := strings.TrimSpace(s)
	if strings.HasSuffix(t, "%") {
		p, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(t, "%")), 64)
		if err != nil || !(p > 0 && p <= 100) {
			return 0, fmt.Errorf("size %q: a percentage must lie in (0, 100]", s)
		}
		if total <= 0 {
			return 0, fmt.Errorf("size %q: a percentage needs a known total", s)
		}
		return int64(float64(total) * p / 100), nil
	}
	m := sizeRE.FindStringSubmatch(t)
	if m == nil {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB) or a percentage", s)
	}
	unit, ok := sizeUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s, m[2])
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %v", s, err)
	}
	n := v * unit
	if !(n >= 1) || n > math.Exp2(62) {
		return 0, fmt.Errorf("size %q: must lie between 1 byte and 4 EiB", s)
	}
	return int64(n), nil
}

// FormatSize writes n bytes with the largest binary unit that keeps it
// whole ("8GiB", "1536KiB", "1000B").
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n != 0 && n%1024 == 0 && i < len(units)-1 {
		n /= 1024
		i++
	}
	return fmt.Sprintf("%d%s", n, units[i])
}
