package rsync

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

// options are the server-side options, as rsync's client sends them
// (options.c server_options). Anything silo cannot honour is refused, never
// ignored: refused holds the first such option's message.
type options struct {
	sender        bool
	verbose       int
	recursive     bool // -r
	dirs          bool // -d
	links         bool // -l
	perms         bool // -p
	executability bool // -E
	times         bool // -t
	omitDirTimes  bool // -O
	omitLinkTimes bool // -J
	owner, group  bool // -o -g: parsed, reported as the account's, never applied
	devices       bool // -D (with --specials)
	specials      bool
	dryRun        bool // -n
	checksum      bool // -c
	ignoreTimes   bool // -I
	sizeOnly      bool
	update        bool // -u
	ignoreExist   bool
	existing      bool
	modifyWindow  int64
	wholeFile     bool // -W
	compress      bool // -z
	compressLevel int  // -1: default
	compressName  string
	checksumName  string
	xferSum       string // the names in checksumName, lower case
	listSum       string
	blockSize     int
	partial       bool
	partialDir    string
	inplace       bool
	appendMode    int // 1 --append, 2 --append-verify (sent as --append twice)
	deleteMode    bool
	deleteExclude bool
	maxDelete     int // -1: no limit
	numericIDs    bool
	mkpath        bool
	ignoreErrors  bool
	ignoreMissing bool
	seed          int32
	seedSet       bool
	removeSource  bool
	oneFS         bool // -x
	secluded      bool // -s: the rest of the arguments come on stdin
	caps          string
	maxSize       int64 // -1: none
	minSize       int64
	args          []string

	refused string
	code    int // exit code for refused: 1 syntax, 4 unsupported
}

func (o *options) refuse(code int, format string, a ...any) {
	if o.refused == "" {
		o.refused = fmt.Sprintf(format, a...)
		o.code = code
	}
}

// shortNames are the long forms of refused short options, for messages.
var shortNames = map[byte]string{
	'H': "hard-links", 'A': "acls", 'X': "xattrs", 'U': "atimes", 'N': "crtimes",
	'C': "cvs-exclude", 'R': "relative", 'm': "prune-empty-dirs", 'b': "backup",
	'k': "copy-dirlinks", 'L': "copy-links", 'K': "keep-dirlinks", '0': "from0",
	'T': "temp-dir",
}

// refusedLong are long options silo does not offer.
var refusedLong = map[string]bool{
	"hard-links": true, "acls": true, "xattrs": true, "fake-super": true, "super": true,
	"daemon": true, "config": true, "iconv": true, "files-from": true, "from0": true,
	"link-dest": true, "copy-dest": true, "compare-dest": true, "backup": true,
	"backup-dir": true, "suffix": true, "delay-updates": true, "temp-dir": true,
	"write-devices": true, "copy-devices": true, "delete-missing-args": true,
	"usermap": true, "groupmap": true, "chown": true, "only-write-batch": true,
	"write-batch": true, "read-batch": true, "copy-links": true, "copy-dirlinks": true,
	"keep-dirlinks": true, "copy-unsafe-links": true, "munge-links": true,
	"relative": true, "cvs-exclude": true, "prune-empty-dirs": true, "atimes": true,
	"crtimes": true, "open-noatime": false, "rsync-path": true, "remote-option": true,
	"password-file": true, "port": true, "address": true, "sockopts": true,
	"early-input": true, "no-implied-dirs": true, "fake-owner": true,
}

// longWithValue take a value, after "=" or as the next word.
var longWithValue = map[string]bool{
	"compress-level": true, "max-delete": true, "timeout": true, "bwlimit": true,
	"log-format": true, "out-format": true, "info": true, "debug": true, "max-alloc": true,
	"checksum-seed": true, "modify-window": true, "compress-choice": true, "zc": true,
	"checksum-choice": true, "cc": true, "skip-compress": true, "block-size": true,
	"partial-dir": true, "max-size": true, "min-size": true, "protocol": true,
	"temp-dir": true, "backup-dir": true, "suffix": true, "link-dest": true,
	"copy-dest": true, "compare-dest": true, "files-from": true, "iconv": true,
	"usermap": true, "groupmap": true, "chown": true, "chmod": true, "config": true,
	"rsync-path": true, "password-file": true, "sockopts": true, "address": true,
	"port": true, "write-batch": true, "read-batch": true, "only-write-batch": true,
	"stop-after": true, "stop-at": true, "contimeout": true, "remote-option": true,
	"early-input": true,
}

// parseArgs parses the words after "rsync --server" (or, with -s, those
// and the ones that came on stdin). Option words come first, then ".",
// then the paths.
func parseArgs(o *options, words []string) {
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" {
			o.args = append(o.args, words[i+1:]...)
			return
		}
		if !strings.HasPrefix(w, "-") || w == "-" {
			o.args = append(o.args, words[i:]...)
			return
		}
		if strings.HasPrefix(w, "--") {
			name, val, hasVal := strings.Cut(w[2:], "=")
			if longWithValue[name] && !hasVal {
				if i+1 < len(words) {
					i++
					val = words[i]
				}
			}
			o.long(name, val)
			continue
		}
		o.short(w[1:], func() string {
			if i+1 < len(words) {
				i++
				return words[i]
			}
			return ""
		})
	}
}

func (o *options) short(cluster string, next func() string) {
	for j := 0; j < len(cluster); j++ {
		c := cluster[j]
		// Letters that take a value: the rest of the cluster, or the
		// next word.
		value := func() string {
			v := cluster[j+1:]
			j = len(cluster)
			if v == "" {
				v = next()
			}
			return v
		}
		switch c {
		case 'v':
			o.verbose++
		case 'q':
			o.verbose = 0
		case 'r':
			o.recursive = true
		case 'd':
			o.dirs = true
		case 'l':
			o.links = true
		case 'p':
			o.perms = true
		case 'E':
			o.executability = true
		case 't':
			o.times = true
		case 'O':
			o.omitDirTimes = true
		case 'J':
			o.omitLinkTimes = true
		case 'o':
			o.owner = true
		case 'g':
			o.group = true
		case 'D':
			o.devices, o.specials = true, true
		case 'n':
			o.dryRun = true
		case 'c':
			o.checksum = true
		case 'I':
			o.ignoreTimes = true
		case 'u':
			o.update = true
		case 'W':
			o.wholeFile = true
		case 'z':
			o.compress = true
		case 'x':
			o.oneFS = true
		case 's':
			o.secluded = true
		case 'S', 'y', '8', 'i', 'h', 'P':
			// sparse, fuzzy, 8-bit output, itemize, human: nothing to do
			// on this side
		case 'e':
			o.caps = value()
		case 'B':
			o.blockSize = o.number("block-size", value())
		case '@':
			o.modifyWindow = int64(o.number("modify-window", value()))
		default:
			if long, ok := shortNames[c]; ok {
				o.refuse(4, "the server does not support --%s (-%c)", long, c)
			} else {
				o.refuse(1, "-%c: unknown option", c)
			}
		}
	}
}

func (o *options) number(name, v string) int {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		o.refuse(1, "--%s=%s: invalid number", name, v)
		return 0
	}
	return n
}

// size parses --max-size/--min-size values: a number with an optional
// K, M or G suffix (powers of 1024).
func (o *options) size(name, v string) int64 {
	mult := int64(1)
	s := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(v, "B"), "b"))
	if s != "" {
		switch s[len(s)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		o.refuse(1, "--%s=%s: invalid size", name, v)
		return 0
	}
	return n * mult
}

func (o *options) long(name, val string) {
	switch name {
	case "server":
	case "sender":
		o.sender = true
	case "partial":
		o.partial = true
	case "partial-dir":
		if val == "" || path.IsAbs(val) || strings.Contains("/"+val+"/", "/../") {
			o.refuse(4, "the server does not support --partial-dir=%s (it must stay below each directory)", val)
		}
		o.partial = true
		o.partialDir = val
	case "inplace":
		o.inplace = true
	case "append":
		o.appendMode++
		o.inplace = true
	case "append-verify":
		o.appendMode = 2
		o.inplace = true
	case "delete", "delete-before", "delete-during", "delete-after", "delete-delay", "del":
		o.deleteMode = true
	case "delete-excluded":
		o.deleteMode = true
		o.deleteExclude = true
	case "max-delete":
		o.maxDelete = o.number(name, val)
	case "force":
		// Directories in the way are removed when empty, whatever it says.
	case "ignore-errors":
		o.ignoreErrors = true
	case "size-only":
		o.sizeOnly = true
	case "ignore-existing":
		o.ignoreExist = true
	case "existing", "ignore-non-existing":
		o.existing = true
	case "modify-window":
		o.modifyWindow = int64(o.number(name, val))
	case "block-size":
		o.blockSize = o.number(name, val)
	case "compress-level":
		o.compressLevel = o.number(name, val)
	case "new-compress":
		o.compress, o.compressName = true, "zlibx"
	case "old-compress":
		o.compress, o.compressName = true, "zlib"
	case "compress-choice", "zc":
		o.compress, o.compressName = true, val
		if val != "zlib" && val != "zlibx" && val != "none" {
			o.refuse(4, "the server does not support --compress-choice=%s (it offers zlibx and zlib)", val)
		}
	case "checksum-choice", "cc":
		// One name is for both uses; two are the transfer's and -c's.
		o.checksumName = val
		x, l, two := strings.Cut(val, ",")
		if !two {
			l = x
		}
		o.xferSum, o.listSum = strings.ToLower(x), strings.ToLower(l)
		for _, n := range []string{o.xferSum, o.listSum} {
			if k, ok := csumNames[n]; n != "auto" && (!ok || k == csumMD4) {
				o.refuse(4, "the server does not support --checksum-choice=%s (it offers %s)", val, offeredList())
			}
		}
	case "checksum-seed":
		o.seed, o.seedSet = int32(o.number(name, val)), true
	case "numeric-ids":
		o.numericIDs = true
	case "mkpath":
		o.mkpath = true
	case "ignore-missing-args":
		o.ignoreMissing = true
	case "remove-source-files", "remove-sent-files":
		o.removeSource = true
	case "one-file-system":
		o.oneFS = true
	case "max-size":
		o.maxSize = o.size(name, val)
	case "min-size":
		o.minSize = o.size(name, val)
	case "specials":
		o.specials = true
	case "no-specials":
		o.specials = false
	case "devices":
		o.devices = true
	case "no-devices":
		o.devices = false
	case "no-W", "no-whole-file":
		o.wholeFile = false
	case "protocol":
		if n, err := strconv.Atoi(val); err != nil || n < 27 || n > protocolVersion {
			o.refuse(2, "--protocol=%s: the server speaks protocols 27 to %d", val, protocolVersion)
		}
	case "timeout", "bwlimit", "log-format", "out-format", "info", "debug", "max-alloc",
		"msgs2stderr", "no-msgs2stderr", "list-only", "no-r", "use-qsort", "safe-links",
		"skip-compress", "preallocate", "fsync", "open-noatime", "stats", "progress",
		"sparse", "fuzzy", "no-motd", "stderr", "trust-sender", "no-inc-recursive",
		"no-i-r", "human-readable", "8-bit-output", "itemize-changes":
		// Reporting and pacing; the client does its own.
	default:
		if refusedLong[name] {
			o.refuse(4, "the server does not support --%s", name)
		} else {
			o.refuse(1, "--%s: unknown option", name)
		}
	}
}
