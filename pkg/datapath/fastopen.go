package datapath

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"
)

// mapFields is every map of the object by its pin name, with the field of
// m it loads into: the one list both pin loaders (loadOwnPins, loadPinned)
// use, taken from the generated struct so a new map cannot be missed.
func mapFields(m *tcMaps) map[string]**ebpf.Map {
	out := map[string]**ebpf.Map{}
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Tag.Get("ebpf")
		out[name] = v.Field(i).Addr().Interface().(**ebpf.Map)
	}
	return out
}

// userSpaceMaps are pinned with the programs' maps but only the loader
// reads and writes them; the programs hold no reference to them.
var userSpaceMaps = []string{tcMapAttachments, tcMapPodPolicy, tcMapPolicySets}

// loadOwnPins is the hot path of Open and OpenPinned: every CNI ADD and DEL
// is a fresh process, and parsing the embedded ELF and BTF (loadTc) was the
// largest part of podscope's own ADD time in tc mode. When this object's
// own program pins exist (their names carry objectHash), they were loaded
// against the pinned maps by this same object, so the spec check has been
// done already; what remains to prove is that the pinned maps are still the
// ones those programs use, which the programs' map IDs tell exactly.
//
// It returns false, holding nothing, when any pin is missing or the maps
// were replaced: the caller then takes the full path, which checks the
// layout against the spec and explains what is wrong.
func (d *Datapath) loadOwnPins() (bool, error) {
	var objs tcObjects
	ok := false
	defer func() {
		if !ok {
			objs.Close()
		}
	}()
	progs := map[hook]**ebpf.Program{hookHostIngress: &objs.HostIngress, hookHostEgress: &objs.HostEgress}
	var used []ebpf.MapID
	for h, dst := range progs {
		p, err := ebpf.LoadPinnedProgram(d.root.Pin(Owner, progPin(h)), nil)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("pinned program %s: %w", progPin(h), err)
		}
		*dst = p
		info, err := p.Info()
		if err != nil {
			return false, nil
		}
		ids, available := info.MapIDs()
		if !available {
			return false, nil
		}
		used = append(used, ids...)
	}
	for name, dst := range mapFields(&objs.tcMaps) {
		m, err := ebpf.LoadPinnedMap(d.root.Pin(Owner, name), nil)
		if err != nil {
			return false, nil
		}
		*dst = m
		info, err := m.Info()
		if err != nil {
			return false, nil
		}
		id, available := info.ID()
		if !available || (!slices.Contains(userSpaceMaps, name) && !slices.Contains(used, id)) {
			return false, nil
		}
	}
	ok = true
	d.objs = objs
	return true, nil
}
