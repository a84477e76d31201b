package podstate

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
)

// jsonKeys lists the top-level keys of one JSON object in the order they
// are written.
func jsonKeys(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %s", b)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// The accounting line's field names are a user contract (docs/design.md
// "Finished pods lose nothing"): scripts read them. The list below is the
// document's, not derived from the struct.
func TestAccountingLineFieldNames(t *testing.T) {
	p := pods.Pod{ID: 3, Namespace: "ns", Name: "web", UID: "u", ContainerID: "c", Interface: "eth0", HostInterface: "veth1",
		IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}, AttachedAt: time.Unix(100, 0), Mode: "tcx", Network: "net"}
	line, err := json.Marshal(NewRecord(p, "del", datapath.Counters{RxBytes: 1}, errors.New("pins gone")))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"time", "reason", "namespace", "pod", "podUID", "containerID", "interface", "hostInterface", "ips", "mode",
		"network", "podID", "attachedAt", "detachedAt", "rxBytes", "rxPackets", "txBytes", "txPackets", "dropsEgress", "dropsIngress",
		"dropBytesEgress", "dropBytesIngress", "networkPolicyDropsEgress", "networkPolicyDropsIngress", "countersError"}
	if got := jsonKeys(t, line); !reflect.DeepEqual(got, want) {
		t.Errorf("accounting line keys\n got %v\nwant %v", got, want)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatal(err)
	}
	if m["pod"] != "web" || m["podUID"] != "u" || m["namespace"] != "ns" || m["containerID"] != "c" {
		t.Errorf("identity fields %v", m)
	}
}
