package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// pluginsVersion is the containernetworking/plugins release whose bridge,
// host-local and loopback the suite runs podscope behind.
const pluginsVersion = "v1.9.1"

var referencePlugins = []string{"main/bridge", "ipam/host-local", "main/loopback", "main/macvlan", "meta/bandwidth"}

var (
	buildOnce    sync.Once
	buildErr     error
	refBinDir    string // reference plugins (cached across runs)
	podscopeDir  string // podscope built from this tree, once per test binary
	podscopeTemp string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if podscopeTemp != "" {
		os.RemoveAll(podscopeTemp)
	}
	os.Exit(code)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// buildPlugins builds the reference plugins into the cache (once, reused by
// later runs) and podscope into a temporary dir (once per test binary).
func buildPlugins(t testing.TB) {
	t.Helper()
	buildOnce.Do(func() {
		cache := os.Getenv("PODSCOPE_CACHE")
		if cache == "" {
			cache = "/var/cache/podscope"
		}
		refBinDir = filepath.Join(cache, "cni-bin", pluginsVersion)
		var missing []string
		for _, p := range referencePlugins {
			if _, err := os.Stat(filepath.Join(refBinDir, filepath.Base(p))); err != nil {
				missing = append(missing, "github.com/containernetworking/plugins/plugins/"+p+"@"+pluginsVersion)
			}
		}
		if len(missing) > 0 {
			if err := os.MkdirAll(refBinDir, 0o755); err != nil {
				buildErr = err
				return
			}
			cmd := exec.Command("go", append([]string{"install"}, missing...)...)
			cmd.Env = append(os.Environ(), "GOBIN="+refBinDir, "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
			cmd.Dir = os.TempDir()
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("building reference CNI plugins: %v\n%s", err, out)
				return
			}
		}
		podscopeTemp, buildErr = os.MkdirTemp("", "pstest-bin-")
		if buildErr != nil {
			return
		}
		podscopeDir = podscopeTemp
		cmd := exec.Command("go", "build", "-o", filepath.Join(podscopeDir, "podscope"), "./plugins/podscope")
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if os.Getenv("GOFLAGS") == "" {
			cmd.Env = append(cmd.Env, "GOFLAGS=-buildvcs=false")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building podscope: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// newNetns creates a named netns (pstest prefix) and removes it at cleanup.
func newNetns(t testing.TB) (ns.NetNS, string) {
	t.Helper()
	name := testenv.Name(t)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", name, err, out)
		}
	})
	p := "/run/netns/" + name
	n, err := ns.GetNS(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, p
}

// node is a test "node": a netns holding the bridge and host veths, a bpffs
// root, a state dir, a libcni cache dir and a conflist.
type node struct {
	t        testing.TB
	ns       ns.NetNS
	root     pins.Root
	stateDir string
	cni      *libcni.CNIConfig
	cacheDir string // libcni's (the runtime's) attachment cache
	list     *libcni.NetworkConfigList
	bridge   string
	v4, v6   netip.Prefix
	mode     string
}

type nodeOpts struct {
	// policy is the podscope entry's "policy" value (JSON), "" for none.
	policy string
	// mode is the podscope attachMode ("" auto, "tcx", "tc").
	mode string
	// noPodscope runs bridge alone (for measurements).
	noPodscope bool
	// cniVersion of the conflist, default 1.1.0.
	cniVersion string
	// primary replaces the bridge entry (its "ipam" is filled in when
	// missing); it runs in the node netns, where links it needs must exist.
	primary func(n *node) map[string]any
	// extra fields of the podscope entry.
	extra map[string]any
	// between are plugins chained after the primary and before podscope
	// (e.g. bandwidth).
	between []map[string]any
}

func newNode(t testing.TB, o nodeOpts) *node {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip")
	buildPlugins(t)
	n := &node{t: t, root: testenv.BPFFSRoot(t), stateDir: t.TempDir(), mode: o.mode}
	n.ns, _ = newNetns(t)
	n.bridge = testenv.Name(t)
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	n.v4 = netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 100+int(b[0])%100, b[1]))
	n.v6 = netip.MustParsePrefix(fmt.Sprintf("fd00:%x::/64", uint16(b[0])<<8|uint16(b[1]))) // one 16-bit group: never more than 4 hex digits
	// Loopback up in the node, like on a real host.
	if err := n.ns.Do(func(ns.NetNS) error {
		return exec.Command("ip", "link", "set", "lo", "up").Run()
	}); err != nil {
		t.Fatal(err)
	}
	ipam := map[string]any{
		"type": "host-local", "dataDir": t.TempDir(),
		"ranges": [][]map[string]string{{{"subnet": n.v4.String()}}, {{"subnet": n.v6.String()}}},
	}
	first := map[string]any{"type": "bridge", "bridge": n.bridge, "isGateway": true, "ipMasq": false, "ipam": ipam}
	if o.primary != nil {
		first = o.primary(n)
		if _, ok := first["ipam"]; !ok {
			first["ipam"] = ipam
		}
	}
	plugins := []any{first}
	for _, b := range o.between {
		plugins = append(plugins, b)
	}
	if !o.noPodscope {
		ps := map[string]any{
			"type": "podscope", "bpffsRoot": n.root.Path, "stateDir": n.stateDir,
			"capabilities": map[string]bool{"io.kubernetes.cri.pod-annotations": true},
		}
		if o.policy != "" {
			ps["policy"] = json.RawMessage(o.policy)
		}
		if o.mode != "" {
			ps["attachMode"] = o.mode
		}
		for k, v := range o.extra {
			ps[k] = v
		}
		plugins = append(plugins, ps)
	}
	if o.cniVersion == "" {
		o.cniVersion = "1.1.0"
	}
	conf, err := json.Marshal(map[string]any{"cniVersion": o.cniVersion, "name": n.bridge, "plugins": plugins})
	if err != nil {
		t.Fatal(err)
	}
	if n.list, err = libcni.ConfListFromBytes(conf); err != nil {
		t.Fatal(err)
	}
	n.cacheDir = t.TempDir()
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{refBinDir, podscopeDir}, n.cacheDir, nil)
	return n
}

// pod is a pod netns attached through the conflist.
type pod struct {
	name, uid, containerID string
	ns                     ns.NetNS
	netnsPath              string
	v4, v6                 netip.Addr
	annotations            map[string]string
	capArgs                map[string]any // runtime capability arguments besides the annotations
	result                 *current.Result
}

func (n *node) newPod(name string, annotations map[string]string) *pod {
	n.t.Helper()
	p := &pod{name: name, annotations: annotations}
	p.ns, p.netnsPath = newNetns(n.t)
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		n.t.Fatal(err)
	}
	p.containerID = hex.EncodeToString(b) + hex.EncodeToString(b)
	p.uid = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	return p
}

func (n *node) rt(p *pod, netns string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.containerID, NetNS: netns, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", p.name}, {"K8S_POD_UID", p.uid}},
	}
	if p.annotations != nil || p.capArgs != nil {
		rt.CapabilityArgs = map[string]any{}
		for k, v := range p.capArgs {
			rt.CapabilityArgs[k] = v
		}
		if p.annotations != nil {
			rt.CapabilityArgs["io.kubernetes.cri.pod-annotations"] = p.annotations
		}
	}
	return rt
}

// inNode runs f in the node netns: plugins exec'd from there inherit it.
func (n *node) inNode(f func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return f() })
}

func (n *node) add(p *pod) error {
	var res *current.Result
	err := n.inNode(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		r, err := n.cni.AddNetworkList(ctx, n.list, n.rt(p, p.netnsPath))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return err
	}
	p.result = res
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		if a.Unmap().Is4() {
			p.v4 = a.Unmap()
		} else {
			p.v6 = a
		}
	}
	return nil
}

func (n *node) mustAdd(p *pod) {
	n.t.Helper()
	if err := n.add(p); err != nil {
		n.t.Fatalf("ADD %s: %v", p.name, err)
	}
	n.t.Cleanup(func() { _ = n.del(p, p.netnsPath) })
}

// del runs DEL of the whole chain; netns "" is containerd's second DEL.
func (n *node) del(p *pod, netns string) error {
	return n.inNode(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return n.cni.DelNetworkList(ctx, n.list, n.rt(p, netns))
	})
}

func (n *node) check(p *pod) error {
	return n.inNode(func() error {
		return n.cni.CheckNetworkList(context.Background(), n.list, n.rt(p, p.netnsPath))
	})
}

// registered returns the pod's registry entry.
func (n *node) registered(p *pod) (pods.Pod, bool) {
	n.t.Helper()
	reg, err := pods.OpenPinnedRegistry(n.root)
	if err != nil {
		n.t.Fatal(err)
	}
	defer reg.Close()
	rp, ok, err := reg.ByContainerID(p.containerID)
	if err != nil {
		n.t.Fatal(err)
	}
	return rp, ok
}

func (n *node) counters(p *pod) datapath.Counters {
	n.t.Helper()
	rp, ok := n.registered(p)
	if !ok {
		n.t.Fatalf("pod %s not registered", p.name)
	}
	dp, err := datapath.OpenPinned(n.root)
	if err != nil {
		n.t.Fatal(err)
	}
	defer dp.Close()
	c, err := dp.Counters(rp.ID)
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// accountingLines returns the accounting.jsonl lines of a container.
func (n *node) accountingLines(containerID string) []map[string]any {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.stateDir, "accounting.jsonl"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		n.t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			n.t.Fatalf("accounting line %q: %v", l, err)
		}
		if m["containerID"] == containerID {
			out = append(out, m)
		}
	}
	return out
}

// setPolicy rebuilds the conflist with a podscope "policy" value.
func (n *node) setPolicy(t testing.TB, policyJSON string) {
	t.Helper()
	var conf map[string]any
	if err := json.Unmarshal(n.list.Bytes, &conf); err != nil {
		t.Fatal(err)
	}
	plugins := conf["plugins"].([]any)
	plugins[len(plugins)-1].(map[string]any)["policy"] = json.RawMessage(policyJSON)
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	if n.list, err = libcni.ConfListFromBytes(b); err != nil {
		t.Fatal(err)
	}
}

// hostIfindex finds the host veth of a pod from inside its netns (the
// registry may be gone, e.g. after cleanup).
func hostIfindex(t testing.TB, n *node, p *pod) int {
	t.Helper()
	var idx int
	err := p.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		idx = l.Attrs().ParentIndex
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// execPodscope runs the podscope binary alone for one verb with p's
// prevResult, as the runtime would within the chain.
func (n *node) execPodscope(p *pod, command string) ([]byte, error) {
	var conf map[string]any
	if err := json.Unmarshal(n.list.Plugins[len(n.list.Plugins)-1].Bytes, &conf); err != nil {
		return nil, err
	}
	conf["name"], conf["cniVersion"] = n.list.Name, n.list.CNIVersion
	if p.result != nil {
		conf["prevResult"] = p.result
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = n.inNode(func() error {
		cmd := exec.Command(filepath.Join(podscopeDir, "podscope"))
		cmd.Stdin = strings.NewReader(string(stdin))
		cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+p.containerID, "CNI_NETNS="+p.netnsPath,
			"CNI_IFNAME=eth0", "CNI_PATH="+podscopeDir, "CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME="+p.name+";K8S_POD_UID="+p.uid)
		var err error
		out, err = cmd.Output()
		if err != nil {
			return fmt.Errorf("podscope %s: %v: %s", command, err, out)
		}
		return nil
	})
	return out, err
}

// flow returns the pod's flow-table entry for proto local<->remote, or nil.
func (n *node) flow(p *pod, proto string, local, remote netip.AddrPort) *datapath.Flow {
	n.t.Helper()
	rp, ok := n.registered(p)
	if !ok {
		n.t.Fatalf("pod %s not registered", p.name)
	}
	dp, err := datapath.OpenPinned(n.root)
	if err != nil {
		n.t.Fatal(err)
	}
	defer dp.Close()
	fls, err := dp.Flows(rp.ID)
	if err != nil {
		n.t.Fatal(err)
	}
	for _, f := range fls {
		if f.Proto == proto && f.Local == local && f.Remote == remote {
			return &f
		}
	}
	return nil
}
