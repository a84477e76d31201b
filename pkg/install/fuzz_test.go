package install

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzSplice: for any CNI config file the installer accepts, the spliced
// file parses, holds the podscope entry exactly once with the entry's
// content, keeps every byte outside the entry's span (so the primary CNI's
// settings, key order and number spelling survive), and unsplicing gives the
// original back. Single-plugin files become a list of the original plugin
// (same JSON value) and podscope.
func FuzzSplice(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b, filepath.Ext(p) == ".conflist")
		}
	}
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","plugins":[]}`), true)
	f.Add([]byte("{\"name\":\"n\",\"plugins\":[\n\t{\"type\":\"bridge\",\"mtu\":1.5e3},\n\t{\"type\":\"podscope\"}\n]}"), true)
	f.Add([]byte(`{"type":"bridge","name":"x","plugins":[{"type":"a"}],"b":[1,{"c":null}]}`), false)
	entry := []byte(policyEntry)
	f.Fuzz(func(t *testing.T, data []byte, list bool) {
		path := "/etc/cni/net.d/10-x.conf"
		if list {
			path += "list"
		}
		c, err := parseNetConf(path, data)
		if err != nil || c.validate() != nil {
			return
		}
		var out []byte
		if !c.isList {
			out = c.convertToList(entry)
		} else {
			out = c.withEntry(entry)
		}
		if !json.Valid(out) {
			t.Fatalf("spliced output is not JSON:\n%s", out)
		}
		o, err := parseNetConf(path+"list", out)
		if err != nil {
			t.Fatalf("spliced output does not parse: %v\n%s", err, out)
		}
		idx := o.podscopeIndexes()
		if len(idx) != 1 {
			t.Fatalf("%d podscope entries after splicing (%v)\n%s", len(idx), idx, out)
		}
		sameJSON(t, o.raw[o.plugins[idx[0]].start:o.plugins[idx[0]].end], entry)
		if !c.isList {
			if len(o.plugins) != 2 {
				t.Fatalf("converted list has %d plugins", len(o.plugins))
			}
			sameJSON(t, o.raw[o.plugins[0].start:o.plugins[0].end], bytes.TrimSpace(data))
			return
		}
		// Every byte outside podscope's span (and the separator withEntry
		// adds before a new entry) is kept.
		var head, tail []byte
		switch ci := c.podscopeIndexes(); {
		case len(ci) > 0: // replaced in place
			head, tail = data[:c.plugins[ci[0]].start], data[c.plugins[ci[0]].end:]
		case len(c.plugins) > 0: // appended after the last plugin
			end := c.plugins[len(c.plugins)-1].end
			head, tail = data[:end], data[end:]
		default: // first element of an empty list
			head, tail = data[:c.open], data[c.open:]
		}
		if !bytes.HasPrefix(out, head) || !bytes.HasSuffix(out, tail) || len(out) < len(head)+len(tail) {
			t.Fatalf("bytes outside the entry changed:\n%s\n---\n%s", data, out)
		}
		if len(c.podscopeIndexes()) == 0 && len(c.plugins) > 0 {
			back, err := o.withoutPodscope()
			if err != nil || !bytes.Equal(back, data) {
				t.Fatalf("unsplicing does not give the original back (%v):\n%s\n---\n%s", err, data, back)
			}
		}
	})
}

func sameJSON(t *testing.T, a, b []byte) {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		t.Fatalf("not JSON: %s / %s", a, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	if !bytes.Equal(xa, ya) {
		t.Fatalf("JSON differs:\n%s\n%s", a, b)
	}
}
