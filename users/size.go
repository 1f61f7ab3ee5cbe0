package users

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"silo/internal/human"
)

// Size is a number of bytes. In the users file it is an integer or a string
// with a unit ("100MiB", "5GB"); it is always written back as an integer.
type Size int64

var units = []struct {
	suffix string
	mult   float64
}{
	// Longest suffixes first so that "MiB" is not read as "B".
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40}, {"pib", 1 << 50},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12}, {"pb", 1e15},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"p", 1 << 50},
	{"b", 1},
}

// ParseSize reads a byte count: plain bytes ("1048576") or a number with a
// unit, decimal (kB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB; K, M, G, T
// mean the binary ones). Case does not matter.
func ParseSize(s string) (Size, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	if mult == 1 {
		if n, err := strconv.ParseInt(t, 10, 64); err == nil && n >= 0 {
			return Size(n), nil
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsNaN(f) || f*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: want bytes or a number with a unit such as 100MiB, 5GB, 2GiB", s)
	}
	return Size(f * mult), nil
}

// UnmarshalTOML accepts an integer or a size string.
func (z *Size) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		if v < 0 {
			return fmt.Errorf("size must not be negative: %d", v)
		}
		*z = Size(v)
		return nil
	case string:
		n, err := ParseSize(v)
		*z = n
		return err
	}
	return fmt.Errorf("size must be an integer or a string such as \"10GiB\", not %T", v)
}

// String formats in binary units with up to one decimal: "1.5 GiB".
func (z Size) String() string { return human.Bytes(int64(z)) }
