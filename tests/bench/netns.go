package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/podscope/podscope/pkg/testenv"
)

// RunPrefix starts every netns the harness creates: testenv's prefix plus
// "bn" so leftovers of an interrupted bench (and only those) can be removed.
const RunPrefix = testenv.Prefix + "bn"

// NewRunID returns a short random id for one run's object names.
func NewRunID() string {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NetnsPath is where `ip netns add` binds a named netns.
func NetnsPath(name string) string { return filepath.Join("/run/netns", name) }

// run executes a command and returns its combined output in the error.
func run(name string, args ...string) error {
	_, err := output(name, args...)
	return err
}

func output(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// runStdin executes a command with stdin.
func runStdin(stdin string, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNetns runs a command inside a named netns. nsenter keeps the mount
// namespace (unlike `ip netns exec`, which remounts /sys and hides bpffs).
func inNetns(netns string, name string, args ...string) error {
	return run("nsenter", append([]string{"--net=" + NetnsPath(netns), name}, args...)...)
}

func inNetnsOutput(netns string, name string, args ...string) (string, error) {
	return output("nsenter", append([]string{"--net=" + NetnsPath(netns), name}, args...)...)
}

func inNetnsStdin(netns, stdin string, name string, args ...string) error {
	return runStdin(stdin, "nsenter", append([]string{"--net=" + NetnsPath(netns), name}, args...)...)
}

// AddNetns creates a named netns with its loopback up.
func AddNetns(name string) error {
	if err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	return run("ip", "-n", name, "link", "set", "lo", "up")
}

// DelNetns removes a named netns (its veths go with it).
func DelNetns(name string) error {
	if _, err := os.Stat(NetnsPath(name)); os.IsNotExist(err) {
		return nil
	}
	return run("ip", "netns", "del", name)
}

// RemoveLeftovers deletes what an earlier, killed bench run left: netns,
// bpffs roots, cgroups and tmpfs dirs whose names start with RunPrefix,
// which nothing but the bench creates.
func RemoveLeftovers(cleanPins func(dir string) error) []string {
	var removed []string
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), RunPrefix) && DelNetns(e.Name()) == nil {
				removed = append(removed, e.Name())
			}
		}
	}
	if entries, err := os.ReadDir("/sys/fs/bpf"); err == nil {
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), RunPrefix) {
				continue
			}
			dir := filepath.Join("/sys/fs/bpf", e.Name())
			if cleanPins != nil {
				_ = cleanPins(dir)
			}
			if os.RemoveAll(dir) == nil {
				removed = append(removed, dir)
			}
		}
	}
	if root, err := cgroup2Root(); err == nil {
		if entries, err := os.ReadDir(root); err == nil {
			for _, e := range entries {
				if e.IsDir() && strings.HasPrefix(e.Name(), RunPrefix) && os.Remove(filepath.Join(root, e.Name())) == nil {
					removed = append(removed, filepath.Join(root, e.Name()))
				}
			}
		}
	}
	if entries, err := os.ReadDir("/dev/shm"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), RunPrefix) && os.RemoveAll(filepath.Join("/dev/shm", e.Name())) == nil {
				removed = append(removed, filepath.Join("/dev/shm", e.Name()))
			}
		}
	}
	return removed
}

// Pair is one "node" netns with a bridge and two "pods" on it:
// pod netns -> host veth -> bridge -> host veth -> pod netns.
type Pair struct {
	Node, Client, Server string // netns names
	Bridge               string
	HostClient           string // host-side veth of the client pod (in Node)
	HostServer           string
	ClientIP, ServerIP   string // without prefix length
	Index                int
}

// NewPair wires pair number idx of run id (subnet 10.99.idx.0/24).
func NewPair(id string, idx int) (*Pair, error) {
	p := &Pair{
		Node:       fmt.Sprintf("%s%s-node%02d", RunPrefix, id, idx),
		Client:     fmt.Sprintf("%s%s-cli%02d", RunPrefix, id, idx),
		Server:     fmt.Sprintf("%s%s-srv%02d", RunPrefix, id, idx),
		Bridge:     testenv.Prefix + "br0",
		HostClient: testenv.Prefix + "hc",
		HostServer: testenv.Prefix + "hs",
		ClientIP:   fmt.Sprintf("10.99.%d.2", idx),
		ServerIP:   fmt.Sprintf("10.99.%d.3", idx),
		Index:      idx,
	}
	if err := p.wire(); err != nil {
		p.Delete()
		return nil, err
	}
	return p, nil
}

func (p *Pair) wire() error {
	for _, n := range []string{p.Node, p.Client, p.Server} {
		if err := AddNetns(n); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"-n", p.Node, "link", "add", p.Bridge, "type", "bridge"},
		{"-n", p.Node, "link", "set", p.Bridge, "up"},
		{"-n", p.Node, "link", "add", p.HostClient, "type", "veth", "peer", "name", "eth0", "netns", p.Client},
		{"-n", p.Node, "link", "add", p.HostServer, "type", "veth", "peer", "name", "eth0", "netns", p.Server},
		{"-n", p.Node, "link", "set", p.HostClient, "master", p.Bridge, "up"},
		{"-n", p.Node, "link", "set", p.HostServer, "master", p.Bridge, "up"},
		{"-n", p.Client, "addr", "add", p.ClientIP + "/24", "dev", "eth0"},
		{"-n", p.Server, "addr", "add", p.ServerIP + "/24", "dev", "eth0"},
		{"-n", p.Client, "link", "set", "eth0", "up"},
		{"-n", p.Server, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := run("ip", s...); err != nil {
			return err
		}
	}
	return nil
}

// Ifindex returns the ifindex of an interface in the node netns (asked of
// ip: /sys under nsenter still shows the harness's own netns).
func (p *Pair) Ifindex(ifname string) (int, error) {
	out, err := output("ip", "-n", p.Node, "-o", "link", "show", ifname)
	if err != nil {
		return 0, err
	}
	// ip may print a warning line first ("Peer netns reference is
	// invalid." for a veth whose peer is in a netns without an id here).
	for _, l := range strings.Split(out, "\n") {
		var idx int
		if _, err := fmt.Sscanf(l, "%d:", &idx); err == nil {
			return idx, nil
		}
	}
	return 0, fmt.Errorf("no ifindex of %s in %q", ifname, firstLine(out))
}

// Delete removes the pair's namespaces.
func (p *Pair) Delete() {
	for _, n := range []string{p.Client, p.Server, p.Node} {
		_ = DelNetns(n)
	}
}
