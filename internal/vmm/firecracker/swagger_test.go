package firecracker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"
)

// A small validator for the subset of Swagger 2.0 / JSON Schema that
// Firecracker's API spec uses: $ref into definitions, object (required,
// properties, additionalProperties), string, integer, number, boolean, array,
// enum, minimum and maximum. Objects without additionalProperties: true are
// treated as closed, as Firecracker's server rejects unknown fields.

const specFile = "testdata/firecracker-v1.16.1.yaml"

type swagger struct {
	Paths       map[string]map[string]operation `yaml:"paths"`
	Definitions map[string]*schema              `yaml:"definitions"`
}

type operation struct {
	Parameters []parameter `yaml:"parameters"`
}

type parameter struct {
	Name     string  `yaml:"name"`
	In       string  `yaml:"in"`
	Required bool    `yaml:"required"`
	Type     string  `yaml:"type"`
	Schema   *schema `yaml:"schema"`
}

type schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Format               string             `yaml:"format"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*schema `yaml:"properties"`
	AdditionalProperties any                `yaml:"additionalProperties"`
	Items                *schema            `yaml:"items"`
	Enum                 []any              `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
}

var (
	specOnce sync.Once
	specVal  *swagger
	specErr  error
)

func loadSpec(t *testing.T) *swagger {
	t.Helper()
	specOnce.Do(func() {
		b, err := os.ReadFile(specFile)
		if err != nil {
			specErr = err
			return
		}
		var s swagger
		if err := yaml.Unmarshal(b, &s); err != nil {
			specErr = fmt.Errorf("parse %s: %w", specFile, err)
			return
		}
		specVal = &s
	})
	if specErr != nil {
		t.Fatal(specErr)
	}
	return specVal
}

// validateRequest checks one request against the spec: the path (with
// {param} templates) and method exist, and the body matches the body
// parameter's schema.
func (s *swagger) validateRequest(method, path string, body []byte) error {
	item, tmpl, err := s.matchPath(path)
	if err != nil {
		return err
	}
	op, ok := item[strings.ToLower(method)]
	if !ok {
		return fmt.Errorf("%s %s: method not in spec for %s", method, path, tmpl)
	}
	var bodyParam *parameter
	for i := range op.Parameters {
		if op.Parameters[i].In == "body" {
			bodyParam = &op.Parameters[i]
		}
	}
	body = bytes.TrimSpace(body)
	switch {
	case bodyParam == nil && len(body) > 0:
		return fmt.Errorf("%s %s: spec takes no body", method, path)
	case bodyParam == nil:
		return nil
	case len(body) == 0 && bodyParam.Required:
		return fmt.Errorf("%s %s: body required", method, path)
	case len(body) == 0:
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("%s %s: body is not json: %w", method, path, err)
	}
	if err := s.validate(bodyParam.Schema, v, "body"); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

func (s *swagger) matchPath(path string) (map[string]operation, string, error) {
	segs := strings.Split(path, "/")
	for tmpl, item := range s.Paths {
		ts := strings.Split(tmpl, "/")
		if len(ts) != len(segs) {
			continue
		}
		ok := true
		for i := range ts {
			if strings.HasPrefix(ts[i], "{") && strings.HasSuffix(ts[i], "}") {
				if segs[i] == "" {
					ok = false
				}
				continue
			}
			if ts[i] != segs[i] {
				ok = false
			}
		}
		if ok {
			return item, tmpl, nil
		}
	}
	return nil, "", fmt.Errorf("path %s not in spec", path)
}

func (s *swagger) resolve(sc *schema) (*schema, error) {
	for i := 0; sc != nil && sc.Ref != ""; i++ {
		name, ok := strings.CutPrefix(sc.Ref, "#/definitions/")
		if !ok || i > 16 {
			return nil, fmt.Errorf("unsupported $ref %q", sc.Ref)
		}
		next, ok := s.Definitions[name]
		if !ok {
			return nil, fmt.Errorf("unknown definition %q", name)
		}
		sc = next
	}
	if sc == nil {
		return nil, fmt.Errorf("missing schema")
	}
	return sc, nil
}

// validate checks a JSON value decoded with UseNumber against sc.
func (s *swagger) validate(sc *schema, v any, at string) error {
	sc, err := s.resolve(sc)
	if err != nil {
		return fmt.Errorf("%s: %w", at, err)
	}
	switch sc.Type {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want object, got %s", at, jsonType(v))
		}
		for _, r := range sc.Required {
			if _, ok := m[r]; !ok {
				return fmt.Errorf("%s: missing required field %q", at, r)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ps, ok := sc.Properties[k]
			if !ok {
				if b, _ := sc.AdditionalProperties.(bool); b {
					continue
				}
				return fmt.Errorf("%s: unknown field %q", at, k)
			}
			if err := s.validate(ps, m[k], at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want array, got %s", at, jsonType(v))
		}
		for i, e := range a {
			if err := s.validate(sc.Items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want string, got %s", at, jsonType(v))
		}
		if len(sc.Enum) > 0 {
			found := false
			for _, e := range sc.Enum {
				if fmt.Sprint(e) == str {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("%s: %q not one of %v", at, str, sc.Enum)
			}
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want %s, got %s", at, sc.Type, jsonType(v))
		}
		f, err := n.Float64()
		if err != nil {
			return fmt.Errorf("%s: bad number %s", at, n)
		}
		if sc.Type == "integer" {
			if _, err := n.Int64(); err != nil || f != math.Trunc(f) {
				return fmt.Errorf("%s: want integer, got %s", at, n)
			}
			if sc.Format == "int32" && (f < math.MinInt32 || f > math.MaxInt32) {
				return fmt.Errorf("%s: %s out of int32 range", at, n)
			}
		}
		if sc.Minimum != nil && f < *sc.Minimum {
			return fmt.Errorf("%s: %s below minimum %v", at, n, *sc.Minimum)
		}
		if sc.Maximum != nil && f > *sc.Maximum {
			return fmt.Errorf("%s: %s above maximum %v", at, n, *sc.Maximum)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want boolean, got %s", at, jsonType(v))
		}
	case "":
		// Untyped schema: anything goes.
	default:
		return fmt.Errorf("%s: unsupported schema type %q", at, sc.Type)
	}
	return nil
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case json.Number, float64:
		return "number"
	case bool:
		return "boolean"
	}
	return fmt.Sprintf("%T", v)
}

// The validator itself: it must reject what Firecracker would.
func TestSwaggerValidator(t *testing.T) {
	s := loadSpec(t)
	cases := []struct {
		name, method, path, body string
		wantErr                  string // "" = valid
	}{
		{"machine ok", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512}`, ""},
		{"drive ok", "PUT", "/drives/d0", `{"drive_id":"d0","path_on_host":"/x","is_root_device":false,"is_read_only":true,"cache_type":"Writeback"}`, ""},
		{"action ok", "PUT", "/actions", `{"action_type":"InstanceStart"}`, ""},
		{"get root", "GET", "/", ``, ""},
		{"missing required", "PUT", "/machine-config", `{"vcpu_count":2}`, `missing required field "mem_size_mib"`},
		{"wrong type int", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":512}`, `body.vcpu_count: want integer, got string`},
		{"fraction", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":512}`, `want integer`},
		{"wrong type bool", "PUT", "/drives/d0", `{"drive_id":"d0","is_root_device":"no"}`, `body.is_root_device: want boolean`},
		{"wrong type object", "PUT", "/boot-source", `["x"]`, `want object, got array`},
		{"unknown field", "PUT", "/boot-source", `{"kernel_image_path":"/k","kernel_args":"x"}`, `unknown field "kernel_args"`},
		{"bad enum", "PUT", "/actions", `{"action_type":"Reboot"}`, `"Reboot" not one of`},
		{"bad enum nested", "PUT", "/drives/d0", `{"drive_id":"d0","is_root_device":false,"cache_type":"None"}`, `not one of`},
		{"below minimum", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, `below minimum`},
		{"above maximum", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":512}`, `above maximum`},
		{"unknown path", "PUT", "/disks/d0", `{}`, `not in spec`},
		{"empty template segment", "PUT", "/drives/", `{"drive_id":"","is_root_device":false}`, `not in spec`},
		{"unknown method", "DELETE", "/drives/d0", ``, `method not in spec`},
		{"body required", "PUT", "/actions", ``, `body required`},
		{"body not allowed", "GET", "/", `{}`, `takes no body`},
		{"not json", "PUT", "/actions", `{action_type`, `not json`},
		{"null", "PUT", "/actions", `null`, `want object, got null`},
		{"pause ok", "PATCH", "/vm", `{"state":"Paused"}`, ""},
		{"vm state enum", "PATCH", "/vm", `{"state":"Running"}`, `"Running" not one of`},
		{"no GET /vm", "GET", "/vm", ``, `method not in spec`},
		{"get version", "GET", "/version", ``, ""},
		{"load ok", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":false,"network_overrides":[{"iface_id":"n0","host_dev_name":"t1"}],"vsock_override":{"uds_path":"/v"}}`, ""},
		{"override incomplete", "PUT", "/snapshot/load", `{"snapshot_path":"/s","network_overrides":[{"iface_id":"n0"}]}`, `body.network_overrides[0]: missing required field "host_dev_name"`},
		{"no drive override", "PUT", "/snapshot/load", `{"snapshot_path":"/s","drive_overrides":[]}`, `unknown field "drive_overrides"`},
		{"patch drive path", "PATCH", "/drives/d0", `{"drive_id":"d0","path_on_host":"/x"}`, ""},
		{"patch drive read-only", "PATCH", "/drives/d0", `{"drive_id":"d0","is_read_only":true}`, `unknown field "is_read_only"`},
		{"create type enum", "PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Incremental"}`, `not one of`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := s.validateRequest(c.method, c.path, []byte(c.body))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("accepted, want error containing %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q, want it to contain %q", err, c.wantErr)
			}
		})
	}
}

// Every definition the driver relies on resolves, so a renamed definition in
// a spec update fails here rather than passing vacuously.
func TestSpecHasDriverDefinitions(t *testing.T) {
	s := loadSpec(t)
	for _, name := range []string{"MachineConfiguration", "BootSource", "Drive", "NetworkInterface",
		"Vsock", "InstanceActionInfo", "InstanceInfo", "Error", "Vm", "SnapshotCreateParams", "SnapshotLoadParams",
		"MemoryBackend", "NetworkOverride", "VsockOverride", "PartialDrive", "FullVmConfiguration", "FirecrackerVersion"} {
		d, ok := s.Definitions[name]
		if !ok || d.Type != "object" || len(d.Properties) == 0 {
			t.Errorf("definition %s missing or empty", name)
		}
	}
}
