package datapath

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/policy"
)

// memlock is what the kernel charges for a map (fdinfo memlock; for the
// LPM trie, allocated on demand, its nodes in use).
func memlock(t testing.TB, m *ebpf.Map) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "memlock:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no memlock in fdinfo")
	return 0
}

func allMemlock(t testing.TB, d *Datapath) int64 {
	var sum int64
	v := reflect.ValueOf(&d.objs.tcMaps).Elem()
	for i := 0; i < v.NumField(); i++ {
		sum += memlock(t, v.Field(i).Interface().(*ebpf.Map))
	}
	return sum
}

// TestScaleSharedNetworkPolicy is the scale case on the datapath's
// side of a CNI ADD (SetPolicySet from the policy text's sum, then Attach
// in tcx mode), in a test netns: PODSCOPE_SCALE_PODS pods (default 50;
// 1000 for the full figure) with one PODSCOPE_SCALE_CIDRS-CIDR network
// policy (default 10,000; 100,000 for the full figure). Every pod must
// attach, and the policy map must hold one copy.
func TestScaleSharedNetworkPolicy(t *testing.T) {
	pods, cidrs := 20, 2000
	if v, err := strconv.Atoi(os.Getenv("PODSCOPE_SCALE_PODS")); err == nil && v > 0 {
		pods = v
	}
	if v, err := strconv.Atoi(os.Getenv("PODSCOPE_SCALE_CIDRS")); err == nil && v > 0 {
		cidrs = v
	}
	n := newNode(t)
	d := openForRun(t)
	p := policy.Policy{Egress: manyCIDRs(cidrs), Ingress: policy.AllowAll()}
	sum := policySum(p)
	parses := 0
	parse := func() (policy.Policy, error) { parses++; return p, nil }

	base := allMemlock(t, d)
	var times []time.Duration
	var oneCopy int64
	for i := 0; i < pods; i++ {
		pod := PodID(100 + i)
		var idx int
		n.do(func() error {
			name := fmt.Sprintf("pstestsc%dh", i)
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: fmt.Sprintf("pstestsc%dp", i)}
			if err := netlink.LinkAdd(v); err != nil {
				return err
			}
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			idx = l.Attrs().Index
			return netlink.LinkSetUp(l)
		})
		start := time.Now()
		n.do(func() error {
			if err := d.SetPolicySet(pod, PolicySetFromSource(sum, parse)); err != nil {
				return fmt.Errorf("pod %d: %w", i+1, err)
			}
			_, err := d.Attach(pod, idx, ModeAuto) // tcx here; PODSCOPE_ATTACH_MODE=tc for the other
			return err
		})
		times = append(times, time.Since(start))
		if i == 0 {
			oneCopy = memlock(t, d.objs.Policy)
		}
	}
	if parses != 1 {
		t.Fatalf("the policy was parsed %d times for %d pods", parses, pods)
	}
	sets, err := d.PolicySets()
	if err != nil || len(sets) != 1 || sets[0].Users != pods {
		t.Fatalf("policy sets: %+v %v", sets, err)
	}
	trie := memlock(t, d.objs.Policy)
	if trie > oneCopy {
		t.Fatalf("policy map grew from %d to %d bytes between pod 1 and pod %d: not shared", oneCopy, trie, pods)
	}
	all := allMemlock(t, d)
	med := func(ts []time.Duration) time.Duration {
		s := append([]time.Duration(nil), ts...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	first10, last10 := times[:min(10, pods)], times[max(0, pods-10):]
	t.Logf("%d pods, %d-CIDR policy: pod 1 (writes the set) %v; median of pods 2-%d %v; pods 1-10 median %v, last 10 median %v",
		pods, cidrs, times[0], pods, med(times[1:]), med(first10), med(last10))
	t.Logf("pinned map memory: %.1f MiB before, %.1f MiB after (policy trie %.1f MiB = one copy, %d entries)",
		float64(base)/(1<<20), float64(all)/(1<<20), float64(trie)/(1<<20), sets[0].Entries)

	// Removing every pod leaves nothing of the policy.
	for i := 0; i < pods; i++ {
		n.do(func() error {
			return errors.Join(d.Detach(PodID(100+i)), d.RemovePod(PodID(100+i)))
		})
	}
	if keys := trieKeys(t, d); len(keys) != 0 {
		t.Fatalf("entries left: %v", keys)
	}
}
