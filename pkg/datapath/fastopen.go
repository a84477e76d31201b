package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
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
// The NetworkPolicy maps are read by bpf/netpol.c's program, not by the TC
// programs.
var userSpaceMaps = []string{tcMapAttachments, tcMapPodPolicy, tcMapPolicySets,
	tcMapNetpolEndpoints, tcMapPodNetpol, tcMapNetpolStats, tcMapNetpolDrops}

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
func (d *Datapath) loadOwnPins() bool {
	objs, err := d.openPins(pinCheck{})
	if err != nil {
		return false
	}
	d.objs = objs
	return true
}

// pinCheck says how openPins proves that the pins it opens belong together.
type pinCheck struct {
	// spec: compare every map with the object's spec (layout). Nil: the
	// fast path, this object's own program pins, with the maps proven by
	// the map IDs those programs use.
	spec *ebpf.CollectionSpec
	// anyProgs accepts another object's program pins (readers of a node
	// whose programs another podscope version loaded), and opens the maps
	// that pins from before policy sets lack as empty maps.
	anyProgs bool
	// mapsOnly checks the map pins that exist against spec and keeps
	// nothing: the check before a load.
	mapsOnly bool
}

var errMapsReplaced = errors.New("pinned maps are not the ones the pinned programs use")

// openPins is the one way the datapath opens its pins (Open's fast path,
// the check before a load, Open's and OpenPinned's full path): programs
// first unless mapsOnly, then every map of the object by its pin name.
// A missing pin is an error wrapping os.ErrNotExist.
func (d *Datapath) openPins(c pinCheck) (tcObjects, error) {
	var objs tcObjects
	ok := false
	defer func() {
		if !ok {
			objs.Close()
		}
	}()
	var used []ebpf.MapID
	for _, h := range hooks {
		if c.mapsOnly {
			break
		}
		path := d.root.Pin(Owner, progPin(h))
		if c.anyProgs {
			path = findProgPin(d.root, h)
		}
		p, err := loadPinnedProgram(path)
		if err != nil {
			return objs, fmt.Errorf("pinned program %s: %w", filepath.Base(path), err)
		}
		if h == hookHostIngress {
			objs.HostIngress = p
		} else {
			objs.HostEgress = p
		}
		if c.spec == nil {
			info, err := p.Info()
			if err != nil {
				return objs, err
			}
			ids, available := info.MapIDs()
			if !available {
				return objs, errMapsReplaced
			}
			used = append(used, ids...)
		}
	}
	for name, dst := range mapFields(&objs.tcMaps) {
		path := d.root.Pin(Owner, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) && c.mapsOnly {
			continue
		}
		if errors.Is(err, os.ErrNotExist) && c.anyProgs && c.spec != nil && slices.Contains(addedLater, name) {
			// Pins from before policy sets (checkLegacyPolicy) or before
			// NetworkPolicy: readers, DEL and cleanup still work on them,
			// with these maps empty.
			ms := c.spec.Maps[name].Copy()
			ms.Pinning = ebpf.PinNone
			m, err = ebpf.NewMap(ms)
		}
		if err != nil {
			return objs, fmt.Errorf("pinned map %s: %w", name, err)
		}
		*dst = m
		if c.spec != nil {
			if (c.anyProgs || c.mapsOnly) && name == tcMapDropReasons && m.MaxEntries() < c.spec.Maps[name].MaxEntries {
				continue // pinned before a reason was added: Open grows it (growDropReasons), readers read what it has
			}
			if err := c.spec.Maps[name].Compatible(m); err != nil {
				return objs, pins.Explain(fmt.Errorf("pinned map %s: %w", path, err), d.root, name)
			}
			continue
		}
		info, err := m.Info()
		if err != nil {
			return objs, err
		}
		id, available := info.ID()
		if !available || (!slices.Contains(userSpaceMaps, name) && !slices.Contains(used, id)) {
			return objs, errMapsReplaced
		}
	}
	ok = !c.mapsOnly
	return objs, nil
}
