// Package cniplugin is the logic of the podscope chained CNI plugin: config
// parsing, ADD/DEL/CHECK/GC/STATUS and adoption of running pods. The pod
// state it reads and writes (lock, registry, accounting log, reaper) is
// pkg/podstate's.
package cniplugin

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/podstate"
	"github.com/podscope/podscope/pkg/policy"
)

// Pod annotations that replace the network's policy for one direction.
const (
	AnnotationEgress  = "podscope.io/egress"
	AnnotationIngress = "podscope.io/ingress"
)

// Bounds of one policy annotation. A pod's annotation is written into the
// node-wide policy map (one entry per distinct CIDR and direction), so
// without a bound one tenant's pod could push that map toward full and make
// every other pod's ADD fail. 256 rules per direction keep a pod at most 516
// entries (256 CIDRs + the two catch-alls, both directions): the 1,048,576
// entries of the map hold 2,000 such pods with all-different policies, more
// than a node runs. 64 KiB is ample for 256 rules in any formatting.
const (
	MaxAnnotationBytes = 64 << 10
	MaxAnnotationRules = 256
)

// annotationsCapability is the runtimeConfig key containerd fills with the
// pod's annotations when the plugin declares the capability.
const annotationsCapability = "io.kubernetes.cri.pod-annotations"

// knownFields are the top-level keys a podscope entry may carry: the CNI
// spec's own (including what libcni and runtimes inject) plus podscope's.
// Anything else is a typo that would silently drop policy, so it is refused.
var knownFields = map[string]bool{
	// CNI spec / libcni
	"cniVersion": true, "name": true, "type": true, "capabilities": true,
	"ipam": true, "dns": true, "prevResult": true, "runtimeConfig": true,
	"args": true, "cni.dev/valid-attachments": true, "cni.dev/attachments": true,
	// podscope
	"bpffsRoot": true, "stateDir": true, "policy": true, "policyFile": true, "attachMode": true, "failClosed": true,
}

// Config is a parsed, validated podscope conflist entry.
type Config struct {
	types.NetConf

	BPFFSRoot  string          `json:"bpffsRoot,omitempty"`
	StateDir   string          `json:"stateDir,omitempty"`
	RawPolicy  json.RawMessage `json:"policy,omitempty"`
	PolicyFile string          `json:"policyFile,omitempty"` // the same object as policy, in a file
	AttachMode string          `json:"attachMode,omitempty"`
	// FailClosed refuses a pod podscope cannot observe (its interface is
	// not a veth) instead of letting it start unobserved.
	FailClosed bool `json:"failClosed,omitempty"`

	RuntimeConfig struct {
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	// Derived.
	Root       pins.Root       `json:"-"`
	Mode       datapath.Mode   `json:"-"`
	Policy     policy.Policy   `json:"-"` // network default with annotations applied
	PrevResult *current.Result `json:"-"`

	policySet *datapath.PolicySet // ADD: the datapath's set for Policy
}

func invalid(msg string, details string) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, msg, details)
}

// parseBase decodes the config without validating policy or annotations:
// enough for DEL and GC, which must clean up even after the operator broke
// the policy in the conflist. With lenient set (DEL, GC) unknown fields and a
// bad attachMode are ignored too: a DEL that fails keeps the pod stuck
// terminating, and the runtime retries it forever.
func parseBase(stdin []byte, lenient bool) (*Config, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &top); err != nil {
		return nil, invalid("podscope: config is not a JSON object", err.Error())
	}
	var unknown []string
	for k := range top {
		if !knownFields[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 && !lenient {
		sort.Strings(unknown)
		return nil, invalid(fmt.Sprintf("podscope: unknown config field %q (known podscope fields: bpffsRoot, stateDir, policy, policyFile, attachMode, failClosed)", unknown[0]),
			"unknown fields: "+strings.Join(unknown, ", "))
	}
	if !lenient {
		if key, ok := duplicateKey(stdin); ok {
			return nil, invalid(fmt.Sprintf("podscope: config field %q given twice (JSON decoders disagree on which one counts)", key), "")
		}
	}
	c := &Config{}
	if err := json.Unmarshal(stdin, c); err != nil {
		if !lenient {
			return nil, invalid("podscope: decoding config: "+fieldOf(err), err.Error())
		}
		// DEL and GC clean up as far as they can (CNI spec): a field of the
		// wrong type is dropped and its default used, the rest still counts.
		c = decodeTolerant(top)
	}
	c.Root = pins.New(c.BPFFSRoot)
	if c.StateDir == "" {
		c.StateDir = podstate.DefaultDir
	}
	env, set, err := datapath.ModeFromEnv()
	switch {
	case err != nil:
		if !lenient {
			return nil, invalid("podscope: environment "+err.Error(), "")
		}
	case set:
		c.Mode = env
	default:
		switch c.AttachMode {
		case "", "auto":
			c.Mode = datapath.ModeAuto
		case "tcx", "tc":
			c.Mode = datapath.Mode(c.AttachMode)
		default:
			if !lenient {
				return nil, invalid(fmt.Sprintf("podscope: attachMode: %q is not an attach mode (tcx, tc, or empty for auto)", c.AttachMode), "")
			}
		}
	}
	return c, nil
}

// decodeTolerant decodes each top-level field on its own and keeps those
// that decode, so one wrongly typed field cannot hide the others (e.g. the
// bpffsRoot a DEL needs behind a "stateDir": 5).
func decodeTolerant(top map[string]json.RawMessage) *Config {
	c := &Config{}
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		one, err := json.Marshal(map[string]json.RawMessage{k: top[k]})
		if err != nil {
			continue
		}
		if json.Unmarshal(one, &Config{}) != nil {
			fmt.Fprintf(os.Stderr, "podscope: ignoring config field %q of the wrong type during cleanup\n", k)
			continue
		}
		_ = json.Unmarshal(one, c) // proved to decode just above
	}
	return c
}

// duplicateKey reports the first object key given twice anywhere in the
// document (as "path.key"). encoding/json silently keeps the last one, so a
// conflist with "policy" twice would enforce whichever an editor put last;
// the policy parser refuses the same input in an annotation.
func duplicateKey(doc []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	key, dup, err := dupWalk(dec, "")
	return key, dup && err == nil
}

func dupWalk(dec *json.Decoder, path string) (string, bool, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", false, err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return "", false, err
			}
			k, _ := kt.(string)
			child := k
			if path != "" {
				child = path + "." + k
			}
			if seen[k] {
				return child, true, nil
			}
			seen[k] = true
			if key, dup, err := dupWalk(dec, child); dup || err != nil {
				return key, dup, err
			}
		}
		_, err := dec.Token() // '}'
		return "", false, err
	case json.Delim('['):
		for i := 0; dec.More(); i++ {
			if key, dup, err := dupWalk(dec, fmt.Sprintf("%s[%d]", path, i)); dup || err != nil {
				return key, dup, err
			}
		}
		_, err := dec.Token() // ']'
		return "", false, err
	}
	return "", false, nil
}

// fieldOf names the field of a json decoding error when the decoder knows it.
func fieldOf(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q: expected %s, got JSON %s", te.Field, te.Type, te.Value)
	}
	return err.Error()
}

// parsePolicy parses the network policy and applies the pod's annotations
// into c.Policy.
func (c *Config) parsePolicy() error {
	c.Policy = policy.Policy{Egress: policy.AllowAll(), Ingress: policy.AllowAll()}
	rawPolicy, field := c.RawPolicy, "policy"
	if c.PolicyFile != "" {
		if c.hasInlinePolicy() {
			return invalid("podscope: policy and policyFile are both set: give the network's policy in one place", "")
		}
		b, err := os.ReadFile(c.PolicyFile)
		if err != nil {
			return invalid(fmt.Sprintf("podscope: policyFile: %v", err), "")
		}
		rawPolicy, field = b, "policyFile "+c.PolicyFile
	}
	if len(rawPolicy) > 0 && !bytes.Equal(bytes.TrimSpace(rawPolicy), []byte("null")) {
		var dirs map[string]json.RawMessage
		if err := json.Unmarshal(rawPolicy, &dirs); err != nil {
			return invalid(fmt.Sprintf("podscope: %s: not a JSON object with \"egress\" and/or \"ingress\"", field), err.Error())
		}
		for k, raw := range dirs {
			var dst *policy.Spec
			switch k {
			case "egress":
				dst = &c.Policy.Egress
			case "ingress":
				dst = &c.Policy.Ingress
			default:
				return invalid(fmt.Sprintf("podscope: %s: unknown field %q (known: egress, ingress)", field, k), "")
			}
			s, err := policy.ParseSpec(raw, field+"."+k)
			if err != nil {
				return invalid("podscope: "+err.Error(), "")
			}
			*dst = s
		}
	}
	ann := c.RuntimeConfig.PodAnnotations
	for _, a := range []struct {
		key string
		dst *policy.Spec
	}{{AnnotationEgress, &c.Policy.Egress}, {AnnotationIngress, &c.Policy.Ingress}} {
		v, ok := ann[a.key]
		if !ok {
			continue
		}
		if len(v) > MaxAnnotationBytes {
			return invalid(fmt.Sprintf("podscope: annotation %s: %d bytes, at most %d are accepted (put large policies in the network's config)", a.key, len(v), MaxAnnotationBytes), "")
		}
		s, err := policy.ParseSpec([]byte(v), "annotation "+a.key)
		if err != nil {
			return invalid("podscope: "+err.Error(), "")
		}
		if len(s.Rules) > MaxAnnotationRules {
			return invalid(fmt.Sprintf("podscope: annotation %s: %d rules, at most %d are accepted per direction (put large policies in the network's config)", a.key, len(s.Rules), MaxAnnotationRules), "")
		}
		*a.dst = s
	}
	return nil
}

// policySyntax changes whenever the policy parser accepts or refuses
// differently: policy sets written from a source text are found again by
// the text's sum, so a stricter parser must not find sets the older one
// accepted.
const policySyntax = "podscope policy text v3" // v3: annotation bounds (MaxAnnotationBytes, MaxAnnotationRules)

// hasPolicy reports whether the entry or the pod's annotations ask for any
// policy at all.
func (c *Config) hasPolicy() bool {
	_, eg := c.RuntimeConfig.PodAnnotations[AnnotationEgress]
	_, in := c.RuntimeConfig.PodAnnotations[AnnotationIngress]
	return eg || in || c.hasInlinePolicy() || c.PolicyFile != ""
}

func (c *Config) hasInlinePolicy() bool {
	raw := bytes.TrimSpace(c.RawPolicy)
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

// policySum is the SHA-256 of every byte the pod's effective policy is
// parsed from (the entry's policy and the pod's policy annotations): pods
// with the same sum share one policy set in the datapath, and an ADD whose
// sum the node already holds skips parsing the policy.
func (c *Config) policySum() [32]byte {
	h := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(policySyntax))
	field(c.RawPolicy)
	// A policy file counts by its identity, not its bytes: an ADD then
	// costs a stat, not reading and hashing megabytes. Rewriting the file
	// (a new inode, or a new size or change time) is a new identity.
	field([]byte(c.PolicyFile))
	if c.PolicyFile != "" {
		var st unix.Stat_t
		if err := unix.Stat(c.PolicyFile, &st); err == nil {
			field([]byte(fmt.Sprintf("%d:%d:%d:%d.%d:%d.%d", st.Dev, st.Ino, st.Size,
				st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)))
		} else {
			field([]byte("unreadable: " + err.Error())) // parse reports it
		}
	}
	for _, k := range []string{AnnotationEgress, AnnotationIngress} {
		if v, ok := c.RuntimeConfig.PodAnnotations[k]; ok {
			field([]byte{1})
			field([]byte(v))
		} else {
			field([]byte{0})
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// policySetFor returns the pod's policy set: without any policy, the
// allow-all one; when the node already holds the set of this policy text,
// that one without parsing the text; else the text is parsed now (a bad
// policy is a code 7 error before anything is written).
func (c *Config) policySetFor() (*datapath.PolicySet, error) {
	if !c.hasPolicy() {
		c.Policy = policy.Policy{Egress: policy.AllowAll(), Ingress: policy.AllowAll()}
		return datapath.NewPolicySet(c.Policy)
	}
	sum := c.policySum()
	parse := func() (policy.Policy, error) {
		if err := c.parsePolicy(); err != nil {
			return policy.Policy{}, err
		}
		return c.Policy, nil
	}
	if !datapath.HasPinnedPolicySet(c.Root, sum) {
		if _, err := parse(); err != nil {
			return nil, err
		}
	}
	// Parsed already or held by the node: parse runs again only if the set
	// went away in between (another pod's DEL released it).
	return datapath.PolicySetFromSource(sum, parse), nil
}

// parseConfigLazy is ParseConfig for ADD: the policy is left unparsed
// (c.Policy is not set); the caller parses it with c.parsePolicy when the
// datapath does not hold the policy set of c.policySum() yet.
func parseConfigLazy(stdin []byte) (*Config, error) {
	return parseConfig(stdin, false)
}

// ParseConfig decodes and validates a podscope entry: unknown fields, the
// network policy, the pod's policy annotations and the prevResult. Every
// failure is a *types.Error with code 7 whose message names the field.
func ParseConfig(stdin []byte) (*Config, error) {
	return parseConfig(stdin, true)
}

// parseConfig is parseBase, then the policy (when withPolicy), then the
// prevResult: a config with a bad policy is refused for its policy first.
func parseConfig(stdin []byte, withPolicy bool) (*Config, error) {
	c, err := parseBase(stdin, false)
	if err != nil {
		return nil, err
	}
	if withPolicy {
		if err := c.parsePolicy(); err != nil {
			return nil, err
		}
	}
	if err := c.parsePrevResult(); err != nil {
		return nil, err
	}
	return c, nil
}

// parsePrevResult decodes the previous plugin's result into c.PrevResult.
func (c *Config) parsePrevResult() error {
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.NetConf); err != nil {
			return invalid("podscope: prevResult: "+err.Error(), "")
		}
		res, err := current.NewResultFromResult(c.NetConf.PrevResult)
		if err != nil {
			return invalid("podscope: prevResult: converting to the current result version: "+err.Error(), "")
		}
		c.PrevResult = res
	}
	return nil
}
