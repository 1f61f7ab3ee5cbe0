// Package human formats quantities for people.
package human

import (
	"fmt"
	"math"
	"strconv"
)

// Bytes formats n bytes in binary units with at most one decimal, rounded
// down: "512 B", "1.2 MiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	return strconv.FormatFloat(math.Floor(v*10)/10, 'f', -1, 64) + " " + string("KMGTPE"[exp]) + "iB"
}
