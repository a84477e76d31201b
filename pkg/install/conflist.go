package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// PluginType is the CNI "type" of podscope's chained plugin: the entry the
// installer adds, finds and removes.
const PluginType = "podscope"

// netConf is a CNI network configuration file seen as byte spans of its
// original text, so the installer can splice one entry into (or out of) the
// "plugins" list without re-encoding anything else: keys keep their order,
// numbers their spelling (1500 stays 1500, 1.5e3 stays 1.5e3), comments of
// whitespace their place.
type netConf struct {
	path string
	raw  []byte

	// isList: the file has a "plugins" list (a conflist). Otherwise it is a
	// single-plugin config (.conf) with a top-level "type".
	isList     bool
	cniVersion string
	name       string
	typ        string // single-plugin configs only

	open    int // offset just after the plugins list's '['
	close   int // offset of the plugins list's ']'
	plugins []pluginSpan
}

// pluginSpan is one element of the plugins list: raw[start:end] is its JSON
// object exactly as written.
type pluginSpan struct {
	start, end int
	typ        string
}

// ParseError is returned for a CNI config file the installer cannot read as
// a network configuration; it names the file, and the file is left as it is.
type ParseError struct {
	Path string
	Msg  string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("cannot parse CNI config %s: %s (file left untouched; fix or replace it, then run podscope-install again)", e.Path, e.Msg)
}

func parseNetConf(path string, data []byte) (*netConf, error) {
	fail := func(format string, a ...any) error {
		return &ParseError{Path: path, Msg: fmt.Sprintf(format, a...)}
	}
	c := &netConf{path: path, raw: data}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, fail("%v", jsonErr(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fail("top level is not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fail("%v", jsonErr(err))
		}
		key, ok := tok.(string)
		if !ok {
			return nil, fail("expected an object key, found %v", tok)
		}
		if seen[key] {
			// Decoders disagree about which duplicate wins; splicing
			// into one of them would be a guess.
			return nil, fail("key %q appears twice", key)
		}
		seen[key] = true
		if key == "plugins" {
			if err := c.parsePlugins(dec, fail); err != nil {
				return nil, err
			}
			continue
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fail("value of %q: %v", key, jsonErr(err))
		}
		switch key {
		case "cniVersion", "name", "type":
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, fail("%q is not a string", key)
			}
			switch key {
			case "cniVersion":
				c.cniVersion = s
			case "name":
				c.name = s
			case "type":
				c.typ = s
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, fail("%v", jsonErr(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fail("unexpected data after the top-level object")
	}
	return c, nil
}

// validate refuses what the runtime would refuse too, so chaining never
// makes a broken file look valid.
func (c *netConf) validate() error {
	fail := func(msg string) error { return &ParseError{Path: c.path, Msg: msg} }
	switch {
	case c.isList && len(c.plugins) == 0:
		return fail(`"plugins" is empty`) // libcni: "no plugins in list"
	case !c.isList && filepath.Ext(c.path) == ".conflist":
		return fail(`no "plugins" list`)
	case !c.isList && c.typ == "":
		return fail(`neither a "plugins" list nor a plugin "type"`)
	case !c.isList && c.typ == PluginType:
		return fail(`a podscope plugin on its own: podscope is a chained plugin and needs a primary plugin before it`)
	}
	return nil
}

func (c *netConf) parsePlugins(dec *json.Decoder, fail func(string, ...any) error) error {
	c.isList = true
	tok, err := dec.Token()
	if err != nil {
		return fail("plugins: %v", jsonErr(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fail(`"plugins" is not a list`)
	}
	c.open = int(dec.InputOffset())
	for i := 0; dec.More(); i++ {
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return fail("plugins[%d]: %v", i, jsonErr(err))
		}
		// Decode leaves the offset just after the value and RawMessage
		// holds the value's exact bytes, so the span is exact.
		end := int(dec.InputOffset())
		start := end - len(v)
		if !bytes.Equal(c.raw[start:end], v) {
			return fail("plugins[%d]: internal offset mismatch", i)
		}
		var p map[string]json.RawMessage
		if err := json.Unmarshal(v, &p); err != nil {
			return fail("plugins[%d] is not an object", i)
		}
		var typ string
		if err := json.Unmarshal(p["type"], &typ); err != nil || typ == "" {
			return fail(`plugins[%d] has no string "type"`, i)
		}
		c.plugins = append(c.plugins, pluginSpan{start: start, end: end, typ: typ})
	}
	tok, err = dec.Token()
	if err != nil {
		return fail("plugins: %v", jsonErr(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != ']' {
		return fail("plugins: expected ']'")
	}
	c.close = int(dec.InputOffset()) - 1
	return nil
}

func jsonErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("unexpected end of file (truncated?)")
	}
	return err
}

// podscopeIndex returns the indexes of the plugins of type podscope.
func (c *netConf) podscopeIndexes() []int {
	var out []int
	for i, p := range c.plugins {
		if p.typ == PluginType {
			out = append(out, i)
		}
	}
	return out
}

// layout is how the plugins list is written: what goes between elements and
// what one level of indentation is, so an added entry looks like its
// neighbours.
type layout struct {
	sep    string // whitespace before an element (after '[' or ',')
	prefix string // the element's own indentation (sep after its last newline)
	unit   string // one level of indentation inside an element
}

func (c *netConf) listLayout() layout {
	if len(c.plugins) == 0 {
		ws := string(c.raw[c.open:c.close])
		l := layout{unit: detectUnit(c.raw)}
		if i := strings.LastIndexByte(ws, '\n'); i >= 0 {
			// "[\n  ]": the element goes one level deeper than ']'.
			l.prefix = ws[i+1:] + l.unit
			l.sep = "\n" + l.prefix
		}
		return l
	}
	last := len(c.plugins) - 1
	var sep string
	if last == 0 {
		sep = string(c.raw[c.open:c.plugins[0].start])
	} else {
		between := string(c.raw[c.plugins[last-1].end:c.plugins[last].start])
		sep = between[strings.IndexByte(between, ',')+1:]
	}
	l := layout{sep: sep}
	if i := strings.LastIndexByte(sep, '\n'); i >= 0 {
		l.prefix = sep[i+1:]
		l.unit = innerUnit(c.raw[c.plugins[last].start:c.plugins[last].end], l.prefix)
		if l.unit == "" {
			l.unit = detectUnit(c.raw)
		}
	}
	return l
}

// innerUnit finds one indentation level inside an element that starts at
// indentation prefix: the whitespace of its first inner line minus prefix.
func innerUnit(elem []byte, prefix string) string {
	i := bytes.IndexByte(elem, '\n')
	if i < 0 {
		return ""
	}
	rest := elem[i+1:]
	j := 0
	for j < len(rest) && (rest[j] == ' ' || rest[j] == '\t') {
		j++
	}
	ws := string(rest[:j])
	if strings.HasPrefix(ws, prefix) && len(ws) > len(prefix) {
		return ws[len(prefix):]
	}
	return ""
}

// detectUnit is the indentation of the file's first indented line, or two
// spaces.
func detectUnit(data []byte) string {
	for _, line := range bytes.Split(data, []byte("\n"))[1:] {
		j := 0
		for j < len(line) && (line[j] == ' ' || line[j] == '\t') {
			j++
		}
		if j > 0 && j < len(line) {
			return string(line[:j])
		}
	}
	return "  "
}

// format renders entry (compact JSON) for this layout.
func (l layout) format(entry []byte) []byte {
	if l.unit == "" && !strings.Contains(l.sep, "\n") {
		return entry
	}
	var b bytes.Buffer
	if err := json.Indent(&b, entry, l.prefix, l.unit); err != nil {
		return entry // entry was validated by the caller; keep it compact
	}
	return b.Bytes()
}

// withEntry returns the file's text with entry (compact JSON of a podscope
// plugin) chained as the last plugin, or replacing an existing podscope
// entry in place. Nothing outside that span changes.
func (c *netConf) withEntry(entry []byte) []byte {
	l := c.listLayout()
	var out bytes.Buffer
	if idx := c.podscopeIndexes(); len(idx) > 0 {
		p := c.plugins[idx[0]]
		out.Write(c.raw[:p.start])
		out.Write(l.format(entry))
		out.Write(c.raw[p.end:])
		return out.Bytes()
	}
	if len(c.plugins) == 0 {
		out.Write(c.raw[:c.open])
		out.WriteString(l.sep)
		out.Write(l.format(entry))
		out.Write(c.raw[c.open:])
		return out.Bytes()
	}
	end := c.plugins[len(c.plugins)-1].end
	out.Write(c.raw[:end])
	out.WriteString(",")
	out.WriteString(l.sep)
	out.Write(l.format(entry))
	out.Write(c.raw[end:])
	return out.Bytes()
}

// withoutPodscope removes every plugin of type podscope together with the
// separator withEntry put before it, so withoutPodscope(withEntry(x)) == x
// for a list that had elements.
func (c *netConf) withoutPodscope() ([]byte, error) {
	cur := c
	for {
		idx := cur.podscopeIndexes()
		if len(idx) == 0 {
			return cur.raw, nil
		}
		i := idx[len(idx)-1]
		var from, to int
		switch {
		case i > 0: // from the previous element's end: takes the comma along
			from, to = cur.plugins[i-1].end, cur.plugins[i].end
		case len(cur.plugins) > 1:
			from, to = cur.plugins[0].start, cur.plugins[1].start
		default:
			from, to = cur.open, cur.close
		}
		out := make([]byte, 0, len(cur.raw)-(to-from))
		out = append(out, cur.raw[:from]...)
		out = append(out, cur.raw[to:]...)
		next, err := parseNetConf(c.path, out)
		if err != nil {
			return nil, err
		}
		cur = next
	}
}

// convertToList turns a single-plugin config into a conflist holding the
// original plugin (its text kept, only re-indented) followed by entry.
func (c *netConf) convertToList(entry []byte) []byte {
	unit := detectUnit(c.raw)
	if !bytes.Contains(c.raw, []byte("\n")) {
		unit = "  "
	}
	name := c.name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(c.path), filepath.Ext(c.path))
	}
	var b bytes.Buffer
	b.WriteString("{\n")
	if c.cniVersion != "" {
		fmt.Fprintf(&b, "%s\"cniVersion\": %s,\n", unit, mustJSON(c.cniVersion))
	}
	fmt.Fprintf(&b, "%s\"name\": %s,\n", unit, mustJSON(name))
	fmt.Fprintf(&b, "%s\"plugins\": [\n", unit)
	prefix := unit + unit
	b.WriteString(prefix)
	orig := bytes.TrimSpace(c.raw)
	// JSON strings cannot hold a raw newline, so indenting after each
	// newline only moves whitespace between tokens.
	b.Write(bytes.ReplaceAll(orig, []byte("\n"), []byte("\n"+prefix)))
	b.WriteString(",\n")
	b.WriteString(prefix)
	l := layout{sep: "\n" + prefix, prefix: prefix, unit: unit}
	b.Write(l.format(entry))
	fmt.Fprintf(&b, "\n%s]\n}\n", unit)
	return b.Bytes()
}

func mustJSON(s string) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a string always marshals
	}
	return b
}
