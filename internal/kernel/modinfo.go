package kernel

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Module is one loadable kernel module found in a kernel package.
type Module struct {
	Name    string   // canonical name: file base without extension, '-' → '_'
	Path    string   // path of the .ko (possibly compressed) on disk
	Depends []string // from .modinfo depends=, canonical names
}

// ModuleName canonicalizes a module file name or name the way the kernel does.
func ModuleName(file string) string {
	base := file
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		base = base[i+1:]
	}
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(base, ext) {
			base = strings.TrimSuffix(base, ext)
			break
		}
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ParseModinfo parses the NUL-separated key=value strings of a .modinfo
// section. Repeated keys (alias=, parm=) accumulate.
func ParseModinfo(data []byte) map[string][]string {
	out := map[string][]string{}
	for _, rec := range bytes.Split(data, []byte{0}) {
		if len(rec) == 0 {
			continue
		}
		k, v, ok := strings.Cut(string(rec), "=")
		if !ok || k == "" {
			continue
		}
		out[k] = append(out[k], v)
	}
	return out
}

// ModuleDepends reads depends= from the .modinfo section of an uncompressed
// module ELF.
func ModuleDepends(r io.ReaderAt) ([]string, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("parse module elf: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("module has no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	var deps []string
	for _, v := range ParseModinfo(data)["depends"] {
		for _, d := range strings.Split(v, ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, ModuleName(d))
			}
		}
	}
	return deps, nil
}

// ResolveOrder returns the modules needed for wanted (with their dependencies)
// in load order: every module comes after all of its dependencies. Wanted
// modules absent from available are skipped (built into the kernel); a
// dependency that is neither available nor in builtin is an error, as is a
// dependency cycle. depsOf is called once per needed module.
func ResolveOrder(wanted []string, available map[string]bool, builtin map[string]bool, depsOf func(name string) ([]string, error)) ([]string, []string, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var order, skipped []string
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(stack, " -> "), name)
		}
		state[name] = visiting
		stack = append(stack, name)
		deps, err := depsOf(name)
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		deps = append([]string(nil), deps...)
		sort.Strings(deps) // deterministic order regardless of modinfo order
		for _, d := range deps {
			if !available[d] {
				if builtin[d] {
					continue
				}
				return fmt.Errorf("module %s depends on %s, which is neither a module file nor built in", name, d)
			}
			if err := visit(d, stack); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range wanted {
		w = ModuleName(w)
		if !available[w] {
			skipped = append(skipped, w)
			continue
		}
		if err := visit(w, nil); err != nil {
			return nil, nil, err
		}
	}
	return order, skipped, nil
}
