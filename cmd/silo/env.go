package main

import (
	"bytes"
	"encoding"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// envPrefix starts the environment variable of every config key: the key's
// path in upper case with '.' as '_', so limits.max_sessions is
// SILO_LIMITS_MAX_SESSIONS. A set variable wins over the file.
const envPrefix = "SILO_"

// configKey is one leaf key of config.toml.
type configKey struct {
	table, name string // table is "" at the top level
	typ         reflect.Type
}

func (k configKey) path() string {
	if k.table == "" {
		return k.name
	}
	return k.table + "." + k.name
}

func (k configKey) env() string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(k.path(), ".", "_"))
}

// configKeys lists every key of Config, read from its toml tags so that a
// new key gets its variable without a list to keep in step.
func configKeys() []configKey {
	var keys []configKey
	var walk func(t reflect.Type, table string)
	walk = func(t reflect.Type, table string) {
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
				// An array of tables ([[hooks]]) is written in the file only.
				continue
			}
			if f.Type.Kind() == reflect.Struct && !isScalar(f.Type) {
				walk(f.Type, name)
				continue
			}
			keys = append(keys, configKey{table, name, f.Type})
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return keys
}

// isScalar reports a type that decodes from one TOML value by itself.
func isScalar(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return p.Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) || p.Implements(reflect.TypeFor[toml.Unmarshaler]())
}

// applyEnv sets the keys named by SILO_* variables in environ over c,
// through the same decoding as the file, and returns one error per bad
// variable. Variables that name no key are left alone: SILO_ is not only
// silo's prefix.
func applyEnv(c *Config, environ []string) []error {
	keys := configKeys()
	var errs []error
	slices.Sort(environ)
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) {
			continue
		}
		i := slices.IndexFunc(keys, func(k configKey) bool { return k.env() == name })
		if i < 0 {
			continue
		}
		k := keys[i]
		v, err := envValue(k.typ, val)
		if err == nil {
			doc := map[string]any{k.name: v}
			if k.table != "" {
				doc = map[string]any{k.table: doc}
			}
			var b bytes.Buffer
			if err = toml.NewEncoder(&b).Encode(doc); err == nil {
				_, err = toml.Decode(b.String(), c)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %v", name, k.path(), err))
		}
	}
	return errs
}

// envValue reads a variable's text as the TOML value a key of type t takes:
// lists are comma-separated.
func envValue(t reflect.Type, s string) (any, error) {
	// A duration is a string ("30s") in the file, not its integer kind.
	if isScalar(t) || t == reflect.TypeFor[time.Duration]() {
		return s, nil
	}
	switch t.Kind() {
	case reflect.String:
		return s, nil
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not true or false", s)
		}
		return b, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", s)
		}
		return n, nil
	case reflect.Slice:
		list := []any{}
		for _, e := range strings.Split(s, ",") {
			if e = strings.TrimSpace(e); e == "" {
				continue
			}
			v, err := envValue(t.Elem(), e)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		return list, nil
	}
	return nil, fmt.Errorf("type %s cannot be set from the environment", t)
}
