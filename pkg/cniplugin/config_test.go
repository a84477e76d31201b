package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
)

const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"pstestbr0"},{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/x"}],
 "ips":[{"address":"10.22.0.5/24","gateway":"10.22.0.1","interface":2},{"address":"fd00:22::5/64","interface":2}]}`

// conf builds a podscope entry as libcni hands it over, with extra fields
// merged in (a nil value deletes the key).
func conf(t *testing.T, extra map[string]any) []byte {
	t.Helper()
	m := map[string]any{
		"cniVersion": "1.0.0", "name": "pstestnet", "type": "podscope",
		"bpffsRoot": "/sys/fs/bpf/pstest", "stateDir": t.TempDir(),
		"capabilities":  map[string]bool{"io.kubernetes.cri.pod-annotations": true},
		"runtimeConfig": map[string]any{},
		"prevResult":    json.RawMessage(prevResult),
	}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

func annotations(kv ...string) map[string]any {
	a := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		a[kv[i]] = kv[i+1]
	}
	return map[string]any{"io.kubernetes.cri.pod-annotations": a}
}

func TestParseConfigValid(t *testing.T) {
	c, err := ParseConfig(conf(t, map[string]any{
		"policy": raw(`{"egress":{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80"],"action":"allow"}]}}`),
		// Fields libcni injects on GC must be accepted too.
		"cni.dev/valid-attachments": []map[string]string{{"containerID": "a", "ifname": "eth0"}},
		"args":                      map[string]any{"cni": map[string]string{"x": "y"}},
		"attachMode":                "tc",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.Egress.Default != policy.Deny || len(c.Policy.Egress.Rules) != 1 {
		t.Fatalf("egress policy = %+v", c.Policy.Egress)
	}
	if c.Policy.Ingress.Default != policy.Allow || len(c.Policy.Ingress.Rules) != 0 {
		t.Fatalf("ingress should default to allow-all, got %+v", c.Policy.Ingress)
	}
	if c.Mode != "tc" || c.PrevResult == nil || len(c.PrevResult.IPs) != 2 {
		t.Fatalf("mode %q prevResult %+v", c.Mode, c.PrevResult)
	}
	if len(c.ValidAttachments) != 1 {
		t.Fatalf("valid attachments not parsed: %+v", c.ValidAttachments)
	}
}

func TestAnnotationReplacesOneDirection(t *testing.T) {
	c, err := ParseConfig(conf(t, map[string]any{
		"policy":        raw(`{"egress":{"default":"allow"},"ingress":{"default":"deny"}}`),
		"runtimeConfig": annotations(AnnotationEgress, `{"default":"deny","rules":[{"cidr":"10.1.0.0/16","action":"allow"}]}`),
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.Egress.Default != policy.Deny || len(c.Policy.Egress.Rules) != 1 {
		t.Fatalf("egress not replaced by the annotation: %+v", c.Policy.Egress)
	}
	if c.Policy.Ingress.Default != policy.Deny {
		t.Fatalf("ingress should keep the network's: %+v", c.Policy.Ingress)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input []byte
		want  []string // substrings of the message
	}{
		{"bad JSON", []byte(`{"type":"podscope",`), []string{"not a JSON object"}},
		{"unknown field", conf(t, map[string]any{"polcy": raw(`{}`)}), []string{`"polcy"`}},
		{"unknown policy direction", conf(t, map[string]any{"policy": raw(`{"egres":{"default":"allow"}}`)}), []string{`policy`, `"egres"`}},
		{"unknown field in spec", conf(t, map[string]any{"policy": raw(`{"egress":{"default":"allow","rule":[]}}`)}), []string{"policy.egress"}},
		{"invalid CIDR", conf(t, map[string]any{"policy": raw(`{"egress":{"default":"allow","rules":[{"cidr":"10.0.0.300/8","action":"deny"}]}}`)}),
			[]string{"policy.egress.rules[0]", "cidr"}},
		{"port out of range", conf(t, map[string]any{"policy": raw(`{"ingress":{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80","70000"],"action":"deny"}]}}`)}),
			[]string{"policy.ingress.rules[0].ports[1]", "70000"}},
		{"tie", conf(t, map[string]any{"policy": raw(`{"egress":{"default":"allow","rules":[{"cidr":"10.0.0.0/8","action":"deny"},{"cidr":"10.0.0.0/8","action":"allow"}]}}`)}),
			[]string{"policy.egress.rules"}},
		{"bad annotation JSON", conf(t, map[string]any{"runtimeConfig": annotations(AnnotationIngress, `{"default":`)}),
			[]string{AnnotationIngress}},
		{"bad annotation rule", conf(t, map[string]any{"runtimeConfig": annotations(AnnotationEgress, `{"default":"allow","rules":[{"cidr":"nope","action":"deny"}]}`)}),
			[]string{AnnotationEgress, "cidr"}},
		// Issue 15: a chain of 33 matches is code 7 here, not 999 at ADD.
		{"chain over 32 matches", conf(t, map[string]any{"policy": raw(`{"egress":{"default":"deny","rules":[{"cidr":"10.1.0.0/16","protocol":"udp","action":"allow"},` +
			`{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["1","3","5","7","9","11","13","15","17","19","21","23","25","27","29","31",` +
			`"33","35","37","39","41","43","45","47","49","51","53","55","57","59","61","63"],"action":"allow"}]}}`)}),
			[]string{"policy.egress.rules[1]", "33 matches"}},
		{"empty ports", conf(t, map[string]any{"policy": raw(`{"egress":{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":[],"action":"deny"}]}}`)}),
			[]string{"policy.egress.rules[0].ports", "empty list"}},
		{"bad attachMode", conf(t, map[string]any{"attachMode": "xdp"}), []string{"attachMode", `"xdp"`}},
		{"wrong type", conf(t, map[string]any{"stateDir": 5}), []string{"stateDir"}},
		// encoding/json keeps the last of two equal keys; the annotation
		// parser refuses them, so the conflist must too.
		{"policy twice", []byte(`{"cniVersion":"1.0.0","name":"n","type":"podscope","policy":{"egress":{"default":"deny"}},"policy":{"egress":{"default":"allow"}}}`),
			[]string{`"policy"`, "twice"}},
		{"egress twice", []byte(`{"cniVersion":"1.0.0","name":"n","type":"podscope","policy":{"egress":{"default":"deny"},"egress":{"default":"allow"}}}`),
			[]string{`"policy.egress"`, "twice"}},
		{"annotation twice", []byte(`{"cniVersion":"1.0.0","name":"n","type":"podscope","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"podscope.io/egress":"{\"default\":\"deny\"}","podscope.io/egress":"{\"default\":\"allow\"}"}}}`),
			[]string{AnnotationEgress, "twice"}},
		{"annotation too many rules", conf(t, map[string]any{"runtimeConfig": annotations(AnnotationEgress, manyRules(MaxAnnotationRules+1))}),
			[]string{AnnotationEgress, "257 rules", "at most 256"}},
		{"annotation too large", conf(t, map[string]any{"runtimeConfig": annotations(AnnotationIngress, `{"default":"allow"`+strings.Repeat(" ", MaxAnnotationBytes)+`}`)}),
			[]string{AnnotationIngress, "bytes", "at most 65536"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(tc.input)
			assertInvalid(t, err, tc.want...)
		})
	}
}

// manyRules is an egress spec with n rules on distinct /32s.
func manyRules(n int) string {
	var b strings.Builder
	b.WriteString(`{"default":"allow","rules":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"cidr":"10.%d.%d.%d/32","action":"deny"}`, i>>16&255, i>>8&255, i&255)
	}
	b.WriteString("]}")
	return b.String()
}

// The bound on annotation rules is inclusive: the limit itself is accepted.
func TestAnnotationAtTheLimit(t *testing.T) {
	c, err := ParseConfig(conf(t, map[string]any{"runtimeConfig": annotations(AnnotationEgress, manyRules(MaxAnnotationRules))}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Policy.Egress.Rules) != 256 {
		t.Fatalf("%d rules", len(c.Policy.Egress.Rules))
	}
}

// Equal keys in different objects are not duplicates.
func TestSameKeyInDifferentObjects(t *testing.T) {
	if _, err := ParseConfig(conf(t, map[string]any{"policy": raw(`{"egress":{"default":"allow"},"ingress":{"default":"allow"}}`)})); err != nil {
		t.Fatal(err)
	}
}

func TestAttachModeEnv(t *testing.T) {
	t.Setenv(datapath.ModeEnv, "tc")
	c, err := ParseConfig(conf(t, map[string]any{"attachMode": "tcx"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "tc" {
		t.Fatalf("env did not force the mode: %q", c.Mode)
	}
	t.Setenv(datapath.ModeEnv, "bogus")
	_, err = ParseConfig(conf(t, nil))
	assertInvalid(t, err, datapath.ModeEnv)
}

// Bad inputs are refused before anything is touched: the bpffs root named in
// the config need not even exist.
func TestAddRejectsBeforeAttaching(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input []byte
		want  string
	}{
		{"missing prevResult", conf(t, map[string]any{"prevResult": nil}), "prevResult"},
		{"bad annotation", conf(t, map[string]any{"runtimeConfig": annotations(AnnotationEgress, `[`)}), AnnotationEgress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/proc/self/ns/net", IfName: "eth0", StdinData: tc.input})
			assertInvalid(t, err, tc.want)
		})
	}
}

func assertInvalid(t *testing.T, err error, want ...string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	if te.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("code %d, want 7: %v", te.Code, te)
	}
	for _, w := range want {
		if !strings.Contains(te.Msg, w) {
			t.Errorf("message %q does not name %q", te.Msg, w)
		}
	}
}

func TestParseArgs(t *testing.T) {
	a := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;junk")
	if a != (pods.Identity{Namespace: "ns1", Pod: "web-0", PodUID: "u-1"}) {
		t.Fatalf("got %+v", a)
	}
}

func TestContainerIPs(t *testing.T) {
	c, err := ParseConfig(conf(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	ips, err := containerIPs(c.PrevResult, "eth0")
	if err != nil || len(ips) != 2 || ips[0].String() != "10.22.0.5/24" || ips[1].String() != "fd00:22::5/64" {
		t.Fatalf("ips %v err %v", ips, err)
	}
	if _, err := containerIPs(c.PrevResult, "net1"); err == nil || !strings.Contains(err.Error(), "net1") {
		t.Fatalf("missing interface: %v", err)
	}
}

// DEL must not fail on a conflist edited after ADD: the runtime would retry
// it forever and the pod would never finish terminating. The pod must also
// really be torn down (its final counters logged, its registry entry gone):
// on a real bpffs root with the pod registered, a DEL that gave up on the
// config would leave both behind.
func TestDelToleratesBrokenConfig(t *testing.T) {
	for name, extra := range map[string]map[string]any{
		"unknown field":  {"polcy": raw(`{}`)},
		"bad policy":     {"policy": raw(`{"egress":{"default":"maybe"}}`)},
		"bad attachMode": {"attachMode": "xdp"},
		// Wrongly typed known fields: CNI asks DEL to clean up as far as it
		// can, so they are dropped, not fatal.
		"wrongly typed stateDir":   {"stateDir": 5},
		"wrongly typed attachMode": {"attachMode": []int{1}},
		"wrongly typed prevResult": {"prevResult": "none"},
		"policy given twice":       {"policy": raw(`{"egress":{"default":"allow"},"egress":{"default":"deny"}}`)},
	} {
		t.Run(name, func(t *testing.T) {
			root := testenv.BPFFSRoot(t)
			stateDir := t.TempDir()
			reg, err := pods.OpenRegistry(root)
			if err != nil {
				t.Fatal(err)
			}
			id, err := reg.Allocate()
			if err != nil {
				t.Fatal(err)
			}
			if err := reg.Put(pods.Pod{ID: id, Namespace: "ns", Name: "p", ContainerID: "c1", Interface: "eth0"}); err != nil {
				t.Fatal(err)
			}
			reg.Close()

			stdin := conf(t, extra)
			var m map[string]any
			json.Unmarshal(stdin, &m)
			m["bpffsRoot"], m["stateDir"] = root.Path, stateDir
			stdin, _ = json.Marshal(m)
			if err := Del(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}); err != nil {
				t.Fatalf("DEL failed: %v", err)
			}

			reg, err = pods.OpenPinnedRegistry(root)
			if err != nil {
				t.Fatal(err)
			}
			defer reg.Close()
			if _, found, err := reg.ByAttachment("c1", "eth0"); err != nil || found {
				t.Errorf("pod still registered after DEL (found %v, err %v)", found, err)
			}
			b, err := os.ReadFile(filepath.Join(stateDir, podstate.AccountingFile))
			if err != nil {
				t.Fatalf("no accounting line: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			var rec podstate.Record
			if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &rec) != nil || rec.ContainerID != "c1" || rec.Reason != "del" {
				t.Errorf("accounting log %q: want one line for c1 with reason del", b)
			}
		})
	}
}

// A policy given by reference (policyFile) parses like the inline one,
// refuses being given twice and a file that cannot be read (code 7), and
// its identity (what pods share a policy set by) changes when the file is
// rewritten, without ADD reading the file when the node holds its set.
func TestPolicyFile(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/policy.json"
	body := `{"egress":{"default":"deny","rules":[{"cidr":"10.0.0.0/8","action":"allow"}]}}`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(conf(t, map[string]any{"policyFile": path}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.Egress.Default != policy.Deny || len(c.Policy.Egress.Rules) != 1 || c.Policy.Ingress.Default != policy.Allow {
		t.Fatalf("policy from the file: %+v", c.Policy)
	}
	sum := c.policySum()
	// Same file, another ADD: same identity.
	c2, _ := ParseConfig(conf(t, map[string]any{"policyFile": path}))
	if c2.policySum() != sum {
		t.Fatal("the same policy file gave another identity")
	}
	// Rewritten (atomically, as a config manager does): a new identity.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(strings.Replace(body, `"deny"`, `"allow"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	c3, err := ParseConfig(conf(t, map[string]any{"policyFile": path}))
	if err != nil {
		t.Fatal(err)
	}
	if c3.policySum() == sum || c3.Policy.Egress.Default != policy.Allow {
		t.Fatal("a rewritten policy file kept its identity or its old content")
	}

	for name, extra := range map[string]map[string]any{
		"both":    {"policyFile": path, "policy": raw(body)},
		"missing": {"policyFile": dir + "/nope.json"},
	} {
		_, err := ParseConfig(conf(t, extra))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "policyFile") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	bad := dir + "/bad.json"
	if err := os.WriteFile(bad, []byte(`{"egress":{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":[],"action":"allow"}]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = ParseConfig(conf(t, map[string]any{"policyFile": bad}))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "policyFile "+bad+".egress.rules[0].ports") {
		t.Fatalf("bad policy file: %v", err)
	}
}
