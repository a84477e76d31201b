package cniplugin

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podscope/podscope/pkg/policy"
)

// Fuzz targets for every parser of the plugin's outside input: the conflist
// entry (with its annotations and prevResult) and CNI_ARGS. Seeds run in
// every `go test`; `make fuzz-quick` fuzzes each briefly, `make fuzz` long.

var entrySeeds = []string{
	`{"cniVersion":"1.0.0","name":"n","type":"podscope"}`,
	`{"cniVersion":"1.0.0","name":"n","type":"podscope","bpffsRoot":"/sys/fs/bpf/x","stateDir":"/tmp/s","attachMode":"tc","failClosed":true,
	  "policy":{"egress":{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80","8000-8080"],"action":"allow"}]},
	            "ingress":{"default":"allow","rules":[{"cidr":"fd00::/8","action":"deny"}]}}}`,
	`{"cniVersion":"1.0.0","name":"n","type":"podscope","policy":{"egress":{"default":"deny"}},"policy":{"egress":{"default":"allow"}}}`,
	`{"cniVersion":"1.0.0","name":"n","type":"podscope","stateDir":5}`,
	`{"cniVersion":"1.0.0","name":"n","type":"podscope","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"podscope.io/egress":"{\"default\":\"deny\",\"rules\":[{\"cidr\":\"1.2.3.4/32\",\"action\":\"allow\"}]}"}}}`,
	`{"cniVersion":"1.0.0","name":"n","type":"podscope","prevResult":` + prevResult + `}`,
	`{"type":"podscope","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`,
	`[]`, `{`, `null`, `{"a":{"b":1,"b":2}}`,
	// 33 matches in one chain: more than the datapath holds.
	`{"cniVersion":"1.0.0","name":"n","type":"podscope","policy":{"egress":{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":[` +
		`"1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17","18","19","20","21","22","23","24","25","26","27","28","29","30","31","32","33"` + `],"action":"deny"}]}}}`,
}

// A refusal is always code 7 (never a panic or code 999); what ADD accepts
// DEL accepts too; an accepted entry has valid policies within the bounds.
func FuzzParseConfig(f *testing.F) {
	for _, s := range entrySeeds {
		f.Add([]byte(s))
	}
	noPins := f.TempDir() // no policy set is pinned there: ADD parses
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		_, lerr := parseBase(data, true)
		// What podscope-install checks (ParseConfig) and what ADD refuses
		// must agree, or the installer could chain an entry every ADD fails.
		aerr := error(nil)
		if ac, e := parseConfigLazy(data); e != nil {
			aerr = e
		} else {
			ac.Root.Path = noPins
			_, aerr = ac.policySetFor()
		}
		if (err == nil) != (aerr == nil) {
			t.Fatalf("installer check says %v, ADD says %v", err, aerr)
		}
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("refusal is not CNI code 7: %v", err)
			}
			return
		}
		if lerr != nil {
			t.Fatalf("ADD accepts, DEL refuses: %v", lerr)
		}
		if _, dup := duplicateKey(data); dup {
			t.Fatal("accepted a key given twice")
		}
		if err := c.Policy.Validate("policy"); err != nil {
			t.Fatalf("accepted an invalid policy: %v", err)
		}
	})
}

// Annotations arrive from any pod on the node: bounded, strict, code 7.
func FuzzAnnotations(f *testing.F) {
	f.Add(`{"default":"allow"}`, `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"udp","ports":["53"],"action":"allow"}]}`)
	f.Add(`{"default":"allow","default":"deny"}`, ``)
	f.Add(`{"default":"allow","rules":[{"cidr":"::ffff:10.1.2.3/128","action":"deny"}]}`, `[`)
	f.Add(`{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":[],"action":"deny"}]}`, `{"default":"allow","rules":null}`)
	f.Fuzz(func(t *testing.T, egress, ingress string) {
		ann := map[string]string{}
		if egress != "" {
			ann[AnnotationEgress] = egress
		}
		if ingress != "" {
			ann[AnnotationIngress] = ingress
		}
		stdin, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "n", "type": "podscope",
			"runtimeConfig": map[string]any{annotationsCapability: ann}})
		if err != nil {
			return // not valid UTF-8 for a JSON string: the runtime could not send it either
		}
		c, err := ParseConfig(stdin)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "annotation") {
				t.Fatalf("refusal is not code 7 naming the annotation: %v", err)
			}
			return
		}
		for _, a := range []struct {
			v    string
			spec policy.Spec
		}{{egress, c.Policy.Egress}, {ingress, c.Policy.Ingress}} {
			if a.v == "" {
				continue
			}
			if len(a.v) > MaxAnnotationBytes || len(a.spec.Rules) > MaxAnnotationRules {
				t.Fatalf("accepted an annotation over the bounds: %d bytes, %d rules", len(a.v), len(a.spec.Rules))
			}
		}
	})
}

// prevResult comes from the primary plugin: any JSON it sends is either
// refused with code 7 or yields container IPs without a panic.
func FuzzPrevResult(f *testing.F) {
	f.Add([]byte(prevResult))
	f.Add([]byte(`{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24"}]}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"x"}],"ips":[{"address":"10.0.0.2/24","interface":7}]}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","ips":[{"address":"::ffff:10.0.0.2/120","interface":-1}]}`))
	f.Fuzz(func(t *testing.T, prev []byte) {
		if !json.Valid(prev) {
			return // libcni never hands over invalid JSON
		}
		stdin := []byte(`{"cniVersion":"1.0.0","name":"n","type":"podscope","prevResult":` + string(prev) + `}`)
		c, err := ParseConfig(stdin)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("refusal is not code 7: %v", err)
			}
			return
		}
		if c.PrevResult != nil {
			ips, _ := containerIPs(c.PrevResult, "eth0")
			for _, ip := range ips {
				if !ip.IsValid() {
					t.Fatalf("invalid prefix %v from %s", ip, prev)
				}
			}
		}
	})
}

// CNI_ARGS: values are taken exactly as given after the first '='.
func FuzzCNIArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1")
	f.Add("K8S_POD_NAME=a=b;;K8S_POD_UID=")
	f.Add(" K8S_POD_NAMESPACE =x;junk;=;K8S_POD_NAME")
	f.Fuzz(func(t *testing.T, s string) {
		a := parseArgs(s)
		for key, v := range map[string]string{"K8S_POD_NAMESPACE": a.Namespace, "K8S_POD_NAME": a.Pod, "K8S_POD_UID": a.PodUID} {
			if v == "" {
				continue
			}
			if !strings.Contains(s, key) || !strings.Contains(s, "="+v) {
				t.Fatalf("%s = %q not in %q", key, v, s)
			}
			if strings.Contains(v, ";") {
				t.Fatalf("%s = %q crosses a ';'", key, v)
			}
		}
	})
}
