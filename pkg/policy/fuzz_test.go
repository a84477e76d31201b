package policy

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParseSpec: a spec from a conflist or an annotation is either refused
// with a *FieldError or round-trips through its JSON form unchanged and
// compiles (with room enough) without error.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		`{"default":"allow"}`,
		`{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80","8000-8080"],"action":"allow"},{"cidr":"10.1.0.0/16","action":"deny"}]}`,
		`{"default":"allow","rules":[{"cidr":"fd00::/8","protocol":"udp","ports":[53],"action":"deny"},{"cidr":"::/0","protocol":"icmpv6","action":"deny"}]}`,
		`{"default":"allow","rules":[{"cidr":"::ffff:10.1.2.3/128","action":"deny"}]}`,
		`{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":[],"action":"deny"}]}`,
		`{"default":"allow","default":"deny"}`,
		`{"default":"allow","rules":[{"cidr":"10.0.0.0/8","action":"deny"},{"cidr":"10.0.0.0/8","action":"allow"}]}`,
		`{"default":"allow","rules":null}`, `[]`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSpec(data, "policy.egress")
		if err != nil {
			if _, ok := err.(*FieldError); !ok {
				t.Fatalf("error %T is not a *FieldError: %v", err, err)
			}
			return
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseSpec(b, "policy.egress")
		if err != nil {
			t.Fatalf("own JSON %s refused: %v", b, err)
		}
		if !reflect.DeepEqual(normal(s), normal(again)) {
			t.Fatalf("round trip changed the spec:\n %+v\n %+v", s, again)
		}
		if _, err := Compile(s, Egress, "policy.egress", 1<<20); err != nil {
			t.Fatalf("a valid spec does not compile: %v", err)
		}
	})
}

// normal makes nil and empty slices equal for comparison.
func normal(s Spec) Spec {
	if len(s.Rules) == 0 {
		s.Rules = nil
	}
	for i := range s.Rules {
		if len(s.Rules[i].Ports) == 0 {
			s.Rules[i].Ports = nil
		}
	}
	return s
}
