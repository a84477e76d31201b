package audit

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/pods"
)

// The audit event's field names are a user contract (docs/design.md "Audit
// event"): the list below is the document's, not derived from the struct.
func TestEventFieldNames(t *testing.T) {
	ev := Event{Time: time.Unix(1, 0), Identity: Identity{Identity: pods.Identity{Namespace: "ns", Pod: "p", PodUID: "u"},
		Container: "c", ContainerID: "cid"}, CgroupID: 1, PID: 2, Comm: "sh", UID: 3, Op: "rename", Path: "/a", Flags: 4,
		Count: 2, Target: "/b", Value: "v"}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.Token()
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
	want := []string{"time", "namespace", "pod", "podUID", "container", "containerID", "cgroupID", "pid", "comm",
		"uid", "op", "path", "flags", "denied", "count", "target", "value"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("audit event keys\n got %v\nwant %v", keys, want)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["pod"] != "p" || m["podUID"] != "u" || m["container"] != "c" || m["containerID"] != "cid" {
		t.Errorf("identity fields %v", m)
	}
	// What podscopectl audit reads back is what was written.
	var back Event
	if err := json.Unmarshal(b, &back); err != nil || back.Identity != ev.Identity || back.Path != ev.Path {
		t.Errorf("round trip: %+v, %v", back, err)
	}
}
